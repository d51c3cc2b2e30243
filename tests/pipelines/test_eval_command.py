"""pipelines/tsort.yaml on the real essays, loaded with `datasets`, then `longforge eval score` over
predictions whose correctness is known by construction (right, too short, wrong)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from catalog import Catalog
from tests.conftest import REPO, run_cli, write_jsonl

LONGBENCH = {"input", "context", "answers", "length", "dataset", "language", "all_classes", "_id"}


def test_tsort_set_loads_with_datasets_and_predictions_are_scored_into_the_catalog(tmp_path, corpora_dir):
    spec = (REPO / "pipelines" / "tsort.yaml").read_text().replace("settings: [2048, 8192, 32768]", "settings: [2048]")
    pipe = tmp_path / "tsort.yaml"
    pipe.write_text(spec)
    catalog = str(tmp_path / "c.duckdb")
    built = run_cli("run", str(pipe), "--input", str(corpora_dir / "paul_graham"), "--output", str(tmp_path / "set"),
                    "--catalog", catalog, "--quiet")
    assert built.returncode == 0, built.stderr[-3000:]

    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "set" / "data" / "*.parquet"), split="train")
    assert LONGBENCH <= set(ds.column_names) and len(ds) > 10
    assert all(r["dataset"] == "tsort_2k" and r["answers"] and r["length_bucket"] == 2048 for r in ds)

    items = pq.read_table(str(tmp_path / "set" / "data")).to_pylist()[:30]
    replies = {}
    for k, it in enumerate(items):
        a = it["answer"]
        replies[it["id"]] = (f"Answer: {json.dumps(a)}", f"Answer: {json.dumps(a[:2])}",
                             f"Answer: {json.dumps(a[::-1])}")[k % 3]
    write_jsonl(tmp_path / "preds.jsonl", [{"id": i, "answer": r} for i, r in replies.items()])
    scored = run_cli("eval", "score", str(tmp_path / "preds.jsonl"), "--set", str(tmp_path / "set"), "--catalog",
                     catalog, "--model", "known-answers")
    assert scored.returncode == 0, scored.stderr[-3000:]
    right = sum(1 for k in range(len(items)) if k % 3 == 0)
    too_short = sum(1 for k in range(len(items)) if k % 3 == 1)
    m = dict(Catalog(catalog).query("SELECT name, value FROM metrics WHERE stage = 'eval'")[1])
    assert m["accuracy:tsort_2k:strict"] == 100 * right / len(items)
    assert m["accuracy:tsort_2k:reference"] == 100 * (right + too_short) / len(items)  # the reference's quirk
    assert m["predicted:tsort_2k"] == len(items) and m["items:tsort_2k"] == len(ds)
    n = Catalog(catalog).query("SELECT count(*) FROM scores WHERE job = 'eval' AND model = 'known-answers'")[1][0][0]
    assert n == 2 * len(items)

    write_jsonl(tmp_path / "other.jsonl", [{"id": "not-an-item", "answer": "Answer: [1, 2, 3, 4]"}])
    bad = run_cli("eval", "score", str(tmp_path / "other.jsonl"), "--set", str(tmp_path / "set"), "--catalog", catalog)
    assert bad.returncode == 2 and "name no item of the set" in bad.stderr
    (tmp_path / "broken.jsonl").write_text('{"id": "x", "answer": "A1"}\n{oops\n')
    bad = run_cli("eval", "score", str(tmp_path / "broken.jsonl"), "--set", str(tmp_path / "set"), "--catalog", catalog)
    assert bad.returncode == 2 and "broken.jsonl:2: not JSON" in bad.stderr
