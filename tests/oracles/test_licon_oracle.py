"""LIConBench (spec liconbench.md 4.1, 4.3, 5): the label-cycled demonstrations re-derived here,
on KJV chapters labelled by their book (the product's tests use KJV verses and Python docstrings),
through pipelines/licon.yaml. In the scattered order an item's demonstrations are the head of the
round-robin sequence (every label once per round in first-appearance order; an exhausted label
gives its place to the first later label with examples left); grouped and shuffled hold the same
multiset; every gold label is demonstrated. Written apart from stages/licon*."""

from __future__ import annotations

import json
import re
from collections import Counter, deque

import pyarrow.parquet as pq

from tests.conftest import REPO, build_corpus, run_cli, write_jsonl


def round_robin(labels: list[str], rounds: int) -> list[int]:
    order = list(dict.fromkeys(labels))
    pools = {lab: deque(i for i, x in enumerate(labels) if x == lab) for lab in order}
    out = []
    for _ in range(rounds):
        for k, lab in enumerate(order):
            source = lab if pools[lab] else next((x for x in order[k + 1:] if pools[x]), None)
            if source is not None:
                out.append(pools[source].popleft())
    return out


def test_demonstrations_follow_the_round_robin_rule_on_kjv_chapters(tmp_path):
    chapters = sorted(pq.read_table(f"{build_corpus('kjv_chapters', tmp_path)}/data").to_pylist(),
                      key=lambda r: r["id"])
    rows = []
    for k, ch in enumerate(chapters):
        meta = json.loads(ch["metadata"])
        book = meta.get("book") or ch["id"].split("/")[1].rsplit(" ", 1)[0]
        split = "test" if k % 10 == 0 else "train"
        rows.append({"id": f"c{k:05d}", "text": " ".join(ch["text"].split()[:30]),
                     "metadata": json.dumps({"label": book, "split": split, "dataset": "kjv_book"})})
    src = write_jsonl(tmp_path / "labelled.jsonl", rows)
    spec = (REPO / "pipelines" / "licon.yaml").read_text().replace(
        "settings: [2048, 8192, 32768]", "settings: [2048, 8192]").replace("test_items: 100", "test_items: 8")
    (tmp_path / "licon.yaml").write_text(spec)
    done = run_cli("run", str(tmp_path / "licon.yaml"), "--input", str(src), "--output", str(tmp_path / "out"),
                   "--catalog", str(tmp_path / "c.duckdb"), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    items = pq.read_table(str(tmp_path / "out" / "data")).to_pylist()
    train = [r for r in rows if json.loads(r["metadata"])["split"] == "train"]
    labels = [json.loads(r["metadata"])["label"] for r in train]
    expected = [labels[i] for i in round_robin(labels, 10)]
    by_key: dict[tuple, dict[str, list[str]]] = {}
    for it in items:
        demos = re.findall(r"^Label: (.*)$", it["context"], flags=re.M)
        assert len(demos) == it["n_demos"]
        by_key.setdefault((it["length_bucket"], it["test_id"]), {})[it["demo_order"]] = demos
        if it["demo_order"] == "scattered":
            assert demos == expected[:len(demos)], it["id"]
        assert it["answers"][0] in demos  # the gold label is demonstrated
    assert len(by_key) >= 8
    for orders in by_key.values():
        assert Counter(orders["grouped"]) == Counter(orders["scattered"]) == Counter(orders["shuffled"])
