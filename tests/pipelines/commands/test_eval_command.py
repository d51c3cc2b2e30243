"""pipelines/tsort.yaml on the real essays, loaded with `datasets`, then `longforge eval score` over
predictions whose correctness is known by construction (right, too short, wrong)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from catalog import Catalog
from tests.conftest import REPO, build_corpus, run_cli, write_jsonl

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


def licon_set(tmp_path, corpora_dir) -> Path:
    """A small LIConBench set from the real KJV verses: 1K tokens, 12 test items, scattered order."""
    verses = build_corpus("kjv_verses", tmp_path)
    spec = (REPO / "pipelines" / "licon.yaml").read_text().replace("settings: [2048, 8192, 32768]", "settings: [1024]")
    spec = spec.replace("orders: [scattered, grouped, shuffled], test_items: 100",
                        "orders: [scattered], test_items: 12")
    (tmp_path / "licon.yaml").write_text(spec)
    built = run_cli("run", str(tmp_path / "licon.yaml"), "--input", verses, "--output", str(tmp_path / "licon"),
                    "--catalog", str(tmp_path / "c.duckdb"), "--quiet")
    assert built.returncode == 0, built.stderr[-3000:]
    return tmp_path / "licon"


def test_licon_replies_are_scored_by_exact_match_and_micro_f1_without_substituted_labels(tmp_path, corpora_dir):
    built = licon_set(tmp_path, corpora_dir)
    items = pq.read_table(str(built / "data")).to_pylist()
    # 12 test items, but those whose gold label 1K tokens of demonstrations cannot show (issue 33, 16)
    assert 6 <= len(items) <= 12 and all(it["gold_label_positions"] for it in items)
    replies, right, invalid = {}, 0, 0
    for k, it in enumerate(items):
        gold = it["answers"][0]
        wrong = next(c for c in it["all_classes"] if c != gold)
        kind = k % 3
        replies[it["id"]] = (f" {gold}\nText: more", gold[:-1] + "x", wrong)[kind]  # right, not a label, wrong
        right += kind == 0
        invalid += kind == 1
    write_jsonl(tmp_path / "p.jsonl", [{"id": i, "answer": r} for i, r in replies.items()])
    catalog = str(tmp_path / "c.duckdb")
    scored = run_cli("eval", "score", str(tmp_path / "p.jsonl"), "--set", str(built), "--catalog", catalog)
    assert scored.returncode == 0, scored.stderr[-3000:]
    m = dict(Catalog(catalog).query("SELECT name, value FROM metrics WHERE stage = 'eval'")[1])
    group = "licon_kjv_book_1k/scattered"
    n = len(items)
    assert m[f"accuracy:{group}:strict"] == 100 * right / n
    precision, recall = right / (n - invalid), right / n  # a reply that is no label is not "made"
    assert m[f"precision:{group}"] == pytest.approx(100 * precision)
    assert m[f"micro_f1:{group}"] == pytest.approx(100 * 2 * precision * recall / (precision + recall))
    assert "micro-F1" in scored.stdout


def test_predict_asks_a_real_model_once_per_item_and_goes_on_where_it_stopped(tmp_path, corpora_dir):
    built = licon_set(tmp_path, corpora_dir)
    preds = tmp_path / "preds.jsonl"
    first = run_cli("eval", "predict", "--set", str(built), "--model", "smollm2-135m", "--limit", "2", "-o", str(preds))
    assert first.returncode == 0, first.stderr[-3000:]
    missing = run_cli("eval", "predict", "--set", str(built), "--model", "no-such-model", "-o", str(preds))
    assert missing.returncode == 2 and "never downloads" in missing.stderr
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    assert len(lines) == 2 and all(isinstance(x["answer"], str) for x in lines)
    again = run_cli("eval", "predict", "--set", str(built), "--model", "smollm2-135m", "--limit", "3", "-o", str(preds))
    assert again.returncode == 0 and "2 already there, 1 answered" in again.stdout
    assert len(preds.read_text().splitlines()) == 3
    scored = run_cli("eval", "score", str(preds), "--set", str(built), "--catalog", str(tmp_path / "c.duckdb"),
                     "--model", "smollm2-135m")
    n = pq.read_table(str(built / "data")).num_rows
    assert scored.returncode == 0 and f"3/{n} predicted" in scored.stdout


def test_a_sets_scorer_is_found_through_its_product_not_its_dataset_name(tmp_path):
    """Issue 34: the scorer comes from the record schema the set's files name (the product that
    built it registered a scorer for it). A TSort set renamed by its user is still TSort; a table
    that only says "tsort" in a column is not a set any product built."""
    from pipelines.commands.eval_command import EvalInputError, set_scorer
    from schemas import cast_table
    from stages.adaleval.tsort import TSORT_ITEM

    item = {"id": "i1", "dataset": "my_renamed_set", "answers": ["[2, 1, 3]"], "answer": [2, 1, 3],
            "input": "order them", "context": "x"}
    (tmp_path / "set" / "data").mkdir(parents=True)
    pq.write_table(cast_table([item], TSORT_ITEM.arrow), tmp_path / "set" / "data" / "train-00000.parquet")
    scorer = set_scorer(str(tmp_path / "set"))
    assert scorer.score(item, "Answer: [2, 1, 3]") == {"strict": 1.0, "reference": 1.0}
    assert scorer.score(item, "Answer: [1, 2, 3]")["strict"] == 0.0

    import pyarrow as pa

    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.Table.from_pylist([{**item, "dataset": "tsort_2k"}]), plain)
    with pytest.raises(EvalInputError, match="which no product scores.*--schema"):
        set_scorer(str(plain))
    # a copy that lost the name (datasets' to_parquet) is scored when the user names the schema
    assert set_scorer(str(plain), "tsort_item@1").score(item, "Answer: [2, 1, 3]")["strict"] == 1.0
    # a stage that added fields after the product's keeps its scorer (tsort_item+scores@1)
    derived = TSORT_ITEM.extended("tsort_item+scores", 1, (pa.field("x", pa.int64()),))
    (tmp_path / "derived").mkdir()
    pq.write_table(cast_table([item], derived.arrow), tmp_path / "derived" / "train-00000.parquet")
    assert type(set_scorer(str(tmp_path / "derived"))) is type(scorer)
    # two record schemas in one folder are two sets
    from stages.licon.stages import LICON_ITEM

    pq.write_table(cast_table([], LICON_ITEM.arrow), tmp_path / "derived" / "train-00001.parquet")
    with pytest.raises(EvalInputError, match="2 schemas"):
        set_scorer(str(tmp_path / "derived"))
