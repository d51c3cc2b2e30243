"""LongICLBench / LIConBench as two stages (spec ../shared/specs/liconbench.md).

``licon_select`` (global): the driver sees each labelled example's labels, split, demonstration
tokens and a hash of its text, never the text; per dataset it picks the demonstrations in rounds
(every label once a round) from the train split, enough rounds to fill the longest setting, and the
test items by label cycling from the test split; everything else is dropped by design.

``licon_items`` (per group): one dataset's chosen examples on one worker (bounded by the benchmark's
size, not the corpus's): per length setting, the most demonstrations (or whole rounds) whose prompt
fits, counted by the named tokenizer; per demonstration order and test item, one LongBench-style record.

Labelled input: documents whose ``metadata`` holds ``label`` (and, for NER and relation sets,
``labels`` and ``answers``), ``split`` (train/test) and optionally ``dataset`` and ``task``, as
``longforge eval import`` and the corpora ``kjv_verses`` and ``python_docstrings`` write them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator

import pyarrow as pa
from pydantic import Field, model_validator

from schemas import REGISTRY, RecordSchema
from stages import register
from stages.base import (
    Dropped,
    GlobalContext,
    GlobalResult,
    GlobalStage,
    GroupStage,
    Outcome,
    Rejected,
    metadata_of,
)
from stages.blocks.eval_view import (
    LONGBENCH_FIELDS,
    LengthParams,
    TokenCounter,
    bucket_name,
    item_hash,
    longbench_length,
    script_language,
    seeded,
)
from stages.licon import core

LABELLED = RecordSchema("labelled", 1, (pa.field("id", pa.string(), nullable=False), pa.field("text", pa.string()),
                                        pa.field("metadata", pa.string())))

LICON_ITEM = REGISTRY.register(RecordSchema("licon_item", 1, LONGBENCH_FIELDS + (
    pa.field("rounds", pa.int32()),  # whole rounds among the demonstrations (fit: demos may add part of one)
    pa.field("demo_order", pa.string()),
    pa.field("instruct", pa.bool_()),
    pa.field("task", pa.string()),
    pa.field("prompt", pa.string()),
    pa.field("n_demos", pa.int32()),
    pa.field("prompt_tokens", pa.int64()),
    pa.field("gold_label_positions", pa.list_(pa.int32())),  # 1-based demonstrations that show the gold label
    pa.field("gold_label_count", pa.int32()),
    pa.field("test_id", pa.string()),
), doc="A LongICLBench item: rounds of labelled demonstrations, then one query."))

_ROLE = pa.field("licon_role", pa.string())  # demo | test | None (not chosen) | invalid
_PLACE = pa.field("licon_place", pa.int64())  # demonstration index (scattered order) or test index
_ROUND = pa.field("licon_round", pa.int32())  # a demonstration's round, 1-based
_TEST_OFFSET = 10**12  # tests come after every demonstration in their group's order


class LiconParams(LengthParams):
    settings: tuple[int, ...] = Field((2048, 8192, 32768), description="nominal prompt lengths in tokens: per "
                                      "setting, the most rounds that fit [paper: 1-5 rounds; README ranges 1K-50K]")
    rounds: tuple[int, ...] | None = Field(None, description="fixed round counts instead of settings (the released "
                                           "data: 1..5)")
    selection: str = Field("round_robin", description="round_robin (4.1), file_order_rounds (TacRED) or coverage "
                           "(Few-NERD, DialogRE)")
    orders: tuple[str, ...] = Field(("scattered",), description="demonstration orders: scattered, grouped, shuffled")
    test_items: int = Field(500, gt=0, description="test items per dataset [paper: 500]")
    test_selection: str = Field("label_cycled", description="label_cycled (round robin over labels, 4.1) or "
                                "file_order (TacRED's reference: file order, at most test_per_label of a label)")
    test_per_label: int = Field(20, gt=0, description="file_order: examples of one label at most [TacRED: 20]")
    instruct: bool = Field(True, description="list every label in the instruction")
    fit: str = Field("demos", description="per setting, the most demonstrations that fit, in the rounds' order "
                     "(demos: the reference code's token-budget mode; the last round may be partial) or the most "
                     "whole rounds (rounds)")
    max_rounds: int = Field(1000, gt=0, description="rounds chosen at most, whatever the settings")
    dataset: str = Field("licon", description="dataset name when a record's metadata names none")
    task: str = Field("classification", description="task when a record's metadata names none: classification, "
                      "relation, ner, dialogre")
    instruction: str = Field(core.Template.task, description="the task sentence opening every prompt")
    input_name: str = Field(core.Template.input_name, description="the field name before each example's text")
    label_name: str = Field(core.Template.label_name, description="the field name before each label")

    @model_validator(mode="after")
    def _known(self):
        if self.selection not in core.SELECTIONS:
            raise ValueError(f"selection: one of {', '.join(core.SELECTIONS)}")
        if not self.orders or set(self.orders) - set(core.ORDERS):
            raise ValueError(f"orders: one or more of {', '.join(core.ORDERS)}")
        if len(set(self.orders)) != len(self.orders):
            raise ValueError(f"orders: each at most once (got {list(self.orders)}): a repeated order repeats its "
                             "items under the same ids")
        if self.fit not in ("demos", "rounds"):
            raise ValueError("fit: demos or rounds")
        if self.test_selection not in ("label_cycled", "file_order"):
            raise ValueError("test_selection: label_cycled or file_order")
        if self.task not in core.TASKS:
            raise ValueError(f"task: one of {', '.join(core.TASKS)}")
        if self.rounds is not None and (not self.rounds or min(self.rounds) < 1):
            raise ValueError("rounds: positive round counts, e.g. [1, 2, 3, 4, 5]")
        return self

    def template(self) -> core.Template:
        return core.Template(self.instruction, self.input_name, self.label_name)


def labelled_fields(record: dict) -> dict | None:
    """label, labels, answers, split, dataset, task of a labelled document; None without a label."""
    meta = metadata_of(record)
    label = meta.get("label")
    if not isinstance(label, str) or not label.strip():
        return None
    labels = meta.get("labels") or [label]
    answers = meta.get("answers") or [label]
    return {"label": label, "labels": [str(x) for x in labels], "answers": [str(x) for x in answers],
            "split": meta.get("split"), "dataset": meta.get("dataset"), "task": meta.get("task")}


@register
class LiconSelect(TokenCounter, GlobalStage):
    """Demonstrations in rounds from the train split and label-cycled test items, per dataset."""

    name = "licon_select"
    Params = LiconParams
    input_schema = LABELLED

    def summary_fields(self, upstream: RecordSchema) -> tuple[pa.Field, ...]:
        return (pa.field("dataset", pa.string()), pa.field("labels", pa.list_(pa.string())),
                pa.field("split", pa.string()), pa.field("tokens", pa.int64()), pa.field("text_hash", pa.string()))

    def summarize(self, record: dict) -> dict:
        f = labelled_fields(record)
        if f is None or not isinstance(record.get("text"), str) or not record["text"].strip():
            return {"dataset": None, "labels": [], "split": None, "tokens": 0, "text_hash": None}
        text = record["text"]
        return {"dataset": f["dataset"] or self.params.dataset, "labels": f["labels"], "split": f["split"],
                "tokens": self.count(self.params.template().demo(text, f["label"])) + 2,
                "text_hash": hashlib.sha1(" ".join(text.lower().split()).encode()).hexdigest()}

    def added_fields(self) -> tuple[pa.Field, ...]:
        return (_ROLE, _PLACE, _ROUND)

    def decide(self, summaries: pa.Table, ctx: GlobalContext) -> GlobalResult:
        p: LiconParams = self.params
        data = summaries.to_pydict()
        n = len(data["id"])
        role, place, rnd = [None] * n, [None] * n, [None] * n
        dropped: dict[int, Dropped] = {}
        metrics: dict[str, float] = {}
        by_set: dict[str, list[int]] = {}
        undemonstrated: set[int] = set()
        for k in range(n):
            if data["dataset"][k] is None or not data["labels"][k]:
                role[k] = "invalid"
            elif data["split"][k] not in ("train", "test"):
                role[k] = "invalid"
            else:
                by_set.setdefault(data["dataset"][k], []).append(k)
        want = max(p.settings) if p.rounds is None else None
        for name, rows in sorted(by_set.items()):
            train = [k for k in rows if data["split"][k] == "train"]
            test = [k for k in rows if data["split"][k] == "test"]
            tokens, demo_rows = 0, []
            limit = min(max(p.rounds), p.max_rounds) if p.rounds else p.max_rounds
            for r, this in enumerate(core.select_rounds(p.selection, [data["labels"][k] for k in train], limit), 1):
                for i in this:
                    role[train[i]], place[train[i]], rnd[train[i]] = "demo", len(demo_rows), r
                    demo_rows.append(train[i])
                    tokens += data["tokens"][train[i]]
                metrics[f"rounds:{name}"] = r
                if want is not None and tokens > want:
                    break  # the longest setting is filled: more rounds would never be shown
            seen = {data["text_hash"][k] for k in demo_rows}
            demonstrated = {label for k in demo_rows for label in data["labels"][k]}
            tests, leaked = [], 0
            first_labels = [data["labels"][k][0] for k in test]
            candidates = (core.file_order_capped(first_labels, p.test_per_label) if p.test_selection == "file_order"
                          else (i for this in core.round_robin(first_labels) for i in this))
            for i in candidates:
                if len(tests) == p.test_items:
                    break
                if data["text_hash"][test[i]] in seen:
                    leaked += 1
                    continue
                if not set(data["labels"][test[i]]) <= demonstrated:
                    # a gold label with no demonstration is in neither the prompt nor all_classes: the
                    # item could not be answered (issue 33, point 16)
                    undemonstrated.add(test[i])
                    continue
                role[test[i]], place[test[i]] = "test", len(tests)
                tests.append(test[i])
            metrics |= {f"demonstrations:{name}": len(demo_rows), f"demonstration tokens:{name}": tokens,
                        f"labels:{name}": len(core.label_order([data["labels"][k] for k in train])),
                        f"test items:{name}": len(tests), f"test texts also in train:{name}": leaked,
                        f"test items with an undemonstrated label:{name}": len(undemonstrated & set(test))}
        demo_texts = {data["text_hash"][j] for j in range(n) if role[j] == "demo"}
        for k in range(n):
            if role[k] is None:
                leak = data["split"][k] == "test" and data["text_hash"][k] in demo_texts
                why = ("a test text that is also a demonstration" if leak
                       else "a gold label that no demonstration shows" if k in undemonstrated
                       else f"{data['split'][k]} example beyond the rounds and test items the settings need")
                dropped[k] = Dropped(data["id"][k], "not chosen", why)
        return GlobalResult(columns={"licon_role": role, "licon_place": place, "licon_round": rnd},
                            dropped=dropped, metrics=metrics)

    def apply(self, record: dict, answer: dict, dropped: Dropped | None) -> Iterator[Outcome]:
        if answer["licon_role"] == "invalid":
            yield Rejected(record["id"], "not a labelled example", "needs text and metadata with 'label' and 'split' "
                           "(train or test), as `longforge eval import` writes", json.dumps(record, default=str))
        elif dropped is not None:
            yield dropped
        else:
            yield {**record, **answer}


@register
class LiconItems(TokenCounter, GroupStage):
    """One dataset's demonstrations and test items in; per setting (or fixed round count), order
    and test item, a LongBench-style record out."""

    name = "licon_items"
    Params = LiconParams
    input_schema = LABELLED.extended("labelled+licon_select", 1, (_ROLE, _PLACE, _ROUND))

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return LICON_ITEM

    def group_of(self, record: dict) -> tuple[str, int]:
        f = labelled_fields(record) or {}
        offset = _TEST_OFFSET if record["licon_role"] == "test" else 0
        return f.get("dataset") or self.params.dataset, offset + int(record["licon_place"])

    def build(self, key: str, records: Iterable[dict], metrics: dict[str, float]) -> Iterator[Outcome]:
        records = list(records)  # this stage's rule reads its group more than once
        p: LiconParams = self.params
        tpl = p.template()
        fields = {r["id"]: labelled_fields(r) for r in records}
        demos = [(r, core.Labelled(r["id"], r["text"], fields[r["id"]]["label"], tuple(fields[r["id"]]["labels"]),
                                   tuple(fields[r["id"]]["answers"]))) for r in records if r["licon_role"] == "demo"]
        tests = [r for r in records if r["licon_role"] == "test"]
        if not demos or not tests:
            for r in records:
                yield Dropped(r["id"], "no item", f"dataset {key}: {len(demos)} demonstrations, {len(tests)} tests")
            return
        task = fields[tests[0]["id"]]["task"] or p.task
        classes = core.label_order([d.labels for _, d in demos])
        shown_classes = classes if p.instruct else None
        ends = {int(r["licon_round"]): i + 1 for i, (r, _) in enumerate(demos)}  # rounds -> demonstrations in them
        available = max(ends)
        longest = max((t["text"] for t in tests), key=self.count)

        def tokens_for(n_demos: int) -> int:
            return self.count(tpl.prompt(shown_classes, [d for _, d in demos[:n_demos]], longest))

        plans: list[tuple[int | None, int]] = []  # (setting, demonstrations shown)
        if p.rounds is not None:
            plans = [(None, ends[r]) for r in p.rounds if r <= available]
            metrics["round counts beyond the pool"] = metrics.get("round counts beyond the pool", 0) + \
                sum(1 for r in p.rounds if r > available)
        else:
            for setting in p.settings:
                if p.fit == "rounds":
                    r = core.best_rounds(lambda r: tokens_for(ends[r]), available, setting)
                    n_demos = ends[r] if r else 0
                else:
                    n_demos = core.best_rounds(tokens_for, len(demos), setting)
                if n_demos == 0:
                    metrics[f"settings too short:{key}"] = metrics.get(f"settings too short:{key}", 0) + 1
                    continue
                plans.append((setting, n_demos))
        for setting, n_demos in plans:
            chosen = [d for _, d in demos[:n_demos]]
            rounds = max((r for r, end in ends.items() if end <= n_demos), default=0)
            bucket = bucket_name(setting) if setting else f"{rounds}round"
            for order in p.orders:
                shown = core.ordered(chosen, order, seeded(self.seed, key, setting, rounds, "order"))
                context = tpl.context(shown)
                instruction = tpl.instruction(shown_classes)
                made = outside = unshown = 0
                shown_labels = {label for d in shown for label in d.labels}
                for t in tests:
                    f = fields[t["id"]]
                    if not set(f["labels"]) <= shown_labels:
                        unshown += 1  # a setting too short to show the gold label once: unanswerable
                        continue
                    query = tpl.query(t["text"])
                    prompt = f"{instruction}\n\n{context}\n\n{query}"
                    n_tokens = self.count(prompt)
                    if setting and not p.tolerance * setting <= n_tokens <= setting:
                        outside += 1
                        continue
                    positions = [i for i, d in enumerate(shown, 1) if set(f["labels"]) & set(d.labels)]
                    dataset = f"licon_{key}_{bucket}"
                    language = t.get("language") or script_language(query, context)
                    rid = f"{dataset}/{order}/{t['id']}"
                    made += 1
                    yield {
                        "id": rid, "_id": item_hash(rid), "input": query, "context": f"{instruction}\n\n{context}",
                        "answers": f["answers"], "language": language, "all_classes": classes,
                        "length": longbench_length(language, query, instruction, context, *f["answers"]),
                        "dataset": dataset, "length_bucket": setting, "length_tokens": n_tokens,
                        "meta": json.dumps({"tokenizer": p.tokenizer, "seed": self.seed, "selection": p.selection,
                                            "setting": setting, "tolerance": p.tolerance, "fit": p.fit,
                                            "source": t.get("source"), "test_items": p.test_items}, sort_keys=True),
                        "rounds": rounds, "demo_order": order, "instruct": p.instruct, "task": task, "prompt": prompt,
                        "n_demos": len(shown), "prompt_tokens": n_tokens, "gold_label_positions": positions,
                        "gold_label_count": len(positions), "test_id": t["id"],
                    }
                for name, n in (("items", made), ("outside window", outside), ("gold label not shown", unshown)):
                    metrics[f"{name}:{key}:{bucket}:{order}"] = metrics.get(f"{name}:{key}:{bucket}:{order}", 0) + n
                metrics[f"rounds:{key}:{bucket}"] = rounds
                metrics[f"demonstrations:{key}:{bucket}"] = len(chosen)
