"""pipelines/licon.yaml on the real standard-library docstrings (144 module labels) and the
selection on the real KJV verses (66 book labels): rounds that show every label once, lengths in
their windows by the named tokenizer, orders that are permutations of one another, gold positions,
no test text among the demonstrations, LongBench fields, the catalog's counts, determinism."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalog import Catalog
from gpu_jobs.models import load_tokenizer
from stages.base import GlobalContext
from stages.licon.stages import LiconSelect
from tests.conftest import REPO, build_corpus, run_twice

SETTINGS = (1024, 4096)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("licon")
    docstrings = build_corpus("python_docstrings", base)
    spec = (REPO / "pipelines" / "licon.yaml").read_text()
    spec = spec.replace("settings: [2048, 8192, 32768]", f"settings: {list(SETTINGS)}").replace(
        "test_items: 100", "test_items: 12")
    (base / "licon.yaml").write_text(spec)
    return base, run_twice(base / "licon.yaml", docstrings, base)


def test_selection_on_the_kjv_makes_rounds_that_each_show_every_book_once():
    from pipelines.commands import corpora

    docs = list(corpora.kjv_verses())
    stage = LiconSelect(LiconSelect.Params(settings=(8192,), test_items=66 * 3), seed=0)
    rows = [{"id": d["id"], **stage.summarize(d)} for d in docs]
    table = pa.Table.from_pylist(rows, schema=pa.schema([pa.field("id", pa.string()),
                                                         *stage.summary_fields(LiconSelect.input_schema)]))
    result = stage.decide(table, GlobalContext())
    role, place, rnd = (result.columns[k] for k in ("licon_role", "licon_place", "licon_round"))
    meta = [json.loads(d["metadata"]) for d in docs]
    demos = sorted((place[k], rnd[k], meta[k]["label"], meta[k]["split"]) for k in range(len(docs))
                   if role[k] == "demo")
    assert {s for *_, s in demos} == {"train"} and [p for p, *_ in demos] == list(range(len(demos)))
    rounds = max(r for _, r, _, _ in demos)
    assert rounds >= 2 and result.metrics["labels:kjv_book"] == 66
    for r in range(1, rounds + 1):
        shown = [label for _, rr, label, _ in demos if rr == r]
        assert len(shown) == len(set(shown)) == 66, f"round {r}"
    tests = [meta[k] for k in range(len(docs)) if role[k] == "test"]
    assert len(tests) == 66 * 3 and {m["split"] for m in tests} == {"test"}
    assert {m["label"] for m in tests} == {m["label"] for m in meta}  # label-cycled: every book is tested
    chosen = sum(1 for r in role if r in ("demo", "test"))
    assert chosen + len(result.dropped) == len(docs)


def test_items_fit_their_windows_and_orders_permute_one_demonstration_list(built):
    _, (out, _) = built
    items = pq.read_table(str(out / "data")).to_pylist()
    tok = load_tokenizer("smollm2")
    assert {i["length_bucket"] for i in items} == set(SETTINGS)
    assert {i["demo_order"] for i in items} == {"scattered", "grouped", "shuffled"}
    assert len({i["_id"] for i in items}) == len(items)
    # every test item in every (setting, order), but those whose gold label the setting cannot show
    unshown = _items_metric(built[0], "gold label not shown:")
    assert len(items) + sum(unshown.values()) == len(SETTINGS) * 3 * 12 and len(items) >= len(SETTINGS) * 3 * 10
    by = {}
    for it in items:
        s = it["length_bucket"]
        n = len(tok.encode(it["prompt"], add_special_tokens=False).ids)
        assert n == it["prompt_tokens"] == it["length_tokens"] and 0.8 * s <= n <= s
        assert it["prompt"] == f"{it['context']}\n\n{it['input']}" and it["input"].endswith("Label:")
        assert it["answers"][0] in it["all_classes"] and len(it["all_classes"]) == 144
        assert it["length"] == sum(len(t.split()) for t in (it["input"], it["context"], *it["answers"]))
        demos = re.findall(r"^Text: (.*)\nLabel: (.*)$", it["context"], flags=re.M)
        assert len(demos) == it["n_demos"]
        assert it["gold_label_positions"] == [k for k, (_, label) in enumerate(demos, 1) if label == it["answers"][0]]
        assert it["gold_label_positions"]  # the gold label is demonstrated: the item can be answered
        assert it["input"].removeprefix("Text: ").removesuffix("\nLabel:") not in {t for t, _ in demos}
        by.setdefault((s, it["test_id"]), {})[it["demo_order"]] = demos
    for orders in by.values():
        assert sorted(orders["grouped"]) == sorted(orders["scattered"]) == sorted(orders["shuffled"])
        labels = [label for _, label in orders["grouped"]]
        runs = 1 + sum(1 for a, b in zip(labels, labels[1:], strict=False) if a != b)
        assert runs == len(set(labels))
    rounds = {it["length_bucket"]: it["n_demos"] for it in items}
    assert rounds[1024] < rounds[4096]
    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train")
    assert {"input", "context", "answers", "length", "dataset", "language", "all_classes", "_id"} <= \
        set(ds.column_names) and len(ds) == len(items)


def test_same_input_and_seed_give_the_same_bytes_and_the_catalog_counts_everything(built):
    base, (a, b) = built
    assert sorted(p.read_bytes() for p in (a / "data").glob("*.parquet")) == \
        sorted(p.read_bytes() for p in (b / "data").glob("*.parquet"))
    cat = Catalog(str(base / "c.duckdb"))
    rows = cat.query("SELECT stage, records_in, records_out, records_rejected, records_dropped FROM stage_stats "
                     "WHERE run_id = "
                     "(SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1) ORDER BY step")[1]
    select = next(r for r in rows if r[0] == "licon_select")
    assert select[1] == 4390 and select[1] == select[2] + select[3] + select[4]
    m = dict(cat.query("SELECT name, value FROM metrics WHERE stage = 'licon_items' AND run_id = "
                       "(SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1)")[1])
    assert m["items:python_module:1k:scattered"] + m["gold label not shown:python_module:1k:scattered"] == 12
    assert m["outside window:python_module:4k:grouped"] == 0


def _items_metric(base, prefix: str) -> dict[str, float]:
    cat = Catalog(str(base / "c.duckdb"))
    rows = cat.query("SELECT name, value FROM metrics WHERE stage = 'licon_items' AND run_id = "
                     "(SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1)")[1]
    return {name: value for name, value in rows if name.startswith(prefix)}


def test_file_order_test_selection_caps_each_relation():
    """TacRED's test side through the stage's decision: file order, at most test_per_label each."""
    import pyarrow as pa

    from stages.base import GlobalContext
    from stages.licon.stages import LiconSelect

    labels = ["r1"] * 5 + ["r2"] * 5 + ["r1", "r2"]
    n_train = 6
    table = pa.table({
        "id": [f"t{k}" for k in range(n_train)] + [f"x{k}" for k in range(len(labels))],
        "dataset": ["tac"] * (n_train + len(labels)),
        "labels": [["r1"], ["r2"]] * 3 + [[x] for x in labels],
        "split": ["train"] * n_train + ["test"] * len(labels),
        "tokens": [10] * (n_train + len(labels)),
        "text_hash": [f"h{k}" for k in range(n_train + len(labels))],
    })
    stage = LiconSelect(LiconSelect.Params(test_selection="file_order", test_per_label=2, test_items=10,
                                           settings=(512,)), seed=0)
    result = stage.decide(table, GlobalContext())
    roles = result.columns["licon_role"]
    tests = [table["id"][k].as_py() for k in range(len(roles)) if roles[k] == "test"]
    assert tests == ["x0", "x1", "x5", "x6"]  # two r1 then two r2, in file order


def test_a_test_item_whose_gold_label_has_no_demonstration_is_not_chosen():
    """Issue 33, point 16: a label with no train example is never shown, so its test item could not be
    answered; it is dropped with that reason and the next answerable item takes its place."""
    from stages.base import GlobalContext
    from stages.licon.stages import LiconSelect

    test_labels = ["r1", "r9", "r2", "r9", "r1", "r2"]
    n_train = 4
    table = pa.table({
        "id": [f"t{k}" for k in range(n_train)] + [f"x{k}" for k in range(len(test_labels))],
        "dataset": ["set"] * (n_train + len(test_labels)),
        "labels": [["r1"], ["r2"]] * 2 + [[x] for x in test_labels],
        "split": ["train"] * n_train + ["test"] * len(test_labels),
        "tokens": [10] * (n_train + len(test_labels)),
        "text_hash": [f"h{k}" for k in range(n_train + len(test_labels))],
    })
    stage = LiconSelect(LiconSelect.Params(test_items=4, settings=(512,)), seed=0)  # every answerable one
    result = stage.decide(table, GlobalContext())
    roles = result.columns["licon_role"]
    chosen = {table["id"][k].as_py() for k in range(len(roles)) if roles[k] == "test"}
    assert chosen and all(test_labels[int(i[1:])] != "r9" for i in chosen)
    assert len(chosen) == 4
    unanswerable = [d for k, d in result.dropped.items() if table["labels"][k].as_py() == ["r9"]]
    assert len(unanswerable) == 2 and all("no demonstration" in d.detail for d in unanswerable)
    assert result.metrics["test items with an undemonstrated label:set"] == 2
