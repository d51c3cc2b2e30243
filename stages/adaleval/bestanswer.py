"""Ada-LEval's BestAnswer as three stages (spec ../shared/specs/ada-leval.md 5), from a StackExchange
dump's posts (``longforge eval import stackexchange Posts.xml``: one post a record).

``se_threads`` (per group): a question and its answers, grouped by question on the workers, become
one thread with each answer's token count and a hash of its normalised text.

``bestanswer_plan`` (global): the driver sees each thread's tags, token counts and hashes, never the
text. Per question and setting, its own answers and then distractors (answers to other questions
sharing a tag, by Jaccard overlap, then a seeded draw) are added while the estimate fits the
setting; candidates are shuffled. Each thread then travels, on the workers, to every item that
shows it: one piece per (item, question or answer).

``bestanswer_items`` (per group): an item's pieces in; the prompt counted by the named tokenizer,
the last-added distractors taken out while it is over the setting; a LongBench-style record out
when it lies in [tolerance x setting, setting]."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator

import pyarrow as pa
from pydantic import Field

from schemas import REGISTRY, RecordSchema
from stages import register
from stages.adaleval import core
from stages.base import Dropped, GlobalContext, GlobalResult, GlobalStage, GroupStage, Outcome, Rejected, metadata_of
from stages.blocks.eval_view import (
    LONGBENCH_FIELDS,
    LengthParams,
    TokenCounter,
    bucket_name,
    english_words,
    item_hash,
    seeded,
)

POST = RecordSchema("post", 1, (pa.field("id", pa.string(), nullable=False), pa.field("text", pa.string()),
                                pa.field("metadata", pa.string())))

_ANSWER = pa.struct([pa.field("id", pa.string()), pa.field("text", pa.string()), pa.field("tokens", pa.int64()),
                     pa.field("hash", pa.string())])
THREAD = REGISTRY.register(RecordSchema("se_thread", 1, (
    pa.field("id", pa.string(), nullable=False),  # the question's post id
    pa.field("text", pa.string()),  # title and body, HTML stripped, code kept
    pa.field("tags", pa.list_(pa.string())),
    pa.field("accepted_answer_id", pa.string()),  # null when the thread can give distractors only
    pa.field("question_tokens", pa.int64()),
    pa.field("answers", pa.list_(_ANSWER)),  # in the dump's order
), doc="A StackExchange question with its answers."))

_USE = pa.struct([pa.field("item", pa.string()), pa.field("slot", pa.int32()), pa.field("answer", pa.int32()),
                  pa.field("added", pa.int32()), pa.field("source", pa.string())])
PIECE = REGISTRY.register(RecordSchema("bestanswer_piece", 1, (
    pa.field("id", pa.string(), nullable=False),  # item#slot
    pa.field("item", pa.string()),
    pa.field("slot", pa.int32()),  # shown place, 1-based; 0 for the question
    pa.field("added", pa.int32()),  # the order candidates were added in (own answers first)
    pa.field("source", pa.string()),  # question | own | distractor
    pa.field("post_id", pa.string()),
    pa.field("text", pa.string()),
    pa.field("tokens", pa.int64()),
    pa.field("tags", pa.list_(pa.string())),  # the question's (question piece) or its thread's
    pa.field("accepted_answer_id", pa.string()),  # on the question piece
    pa.field("thread", pa.string()),
), doc="One question or candidate of one BestAnswer item, on its way to the item."))

BESTANSWER_ITEM = REGISTRY.register(RecordSchema("bestanswer_item", 1, LONGBENCH_FIELDS + (
    pa.field("question_id", pa.string()),
    pa.field("question", pa.string()),
    pa.field("all_answers", pa.list_(pa.string())),  # in shown order, A1 first
    pa.field("answer", pa.string()),  # "A{k}"
    pa.field("tags", pa.list_(pa.string())),
    pa.field("setting", pa.int64()),
    pa.field("num_choice", pa.int32()),
    pa.field("accepted_answer_id", pa.string()),
    pa.field("candidate_ids", pa.list_(pa.string())),
    pa.field("candidate_sources", pa.list_(pa.string())),  # own | distractor, per shown candidate
    pa.field("prompt", pa.string()),
    pa.field("prompt_tokens", pa.int64()),
), doc="An Ada-LEval BestAnswer item: a question and candidate answers; the accepted one is the answer."))


class BestAnswerParams(LengthParams):
    settings: tuple[int, ...] = Field((2048, 8192, 32768), description="nominal prompt lengths in tokens [paper: "
                                      "1k, 2k, 4k, 6k, 8k, 12k, 16k, 32k, 64k, 128k]")
    min_answers: int = Field(2, ge=1, description="a question is asked with at least this many answers [ours: 2]")
    candidate_overhead: int = Field(8, ge=0, description="tokens a candidate's label and spacing add, for the "
                                    "plan's estimate (the items stage counts exactly)")


def _hash(text: str) -> str:
    return hashlib.sha1(" ".join(text.lower().split()).encode()).hexdigest()


@register
class SeThreads(TokenCounter, GroupStage):
    """Posts to threads: a question and its answers, on one worker by question id."""

    name = "se_threads"
    Params = BestAnswerParams
    input_schema = POST

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return THREAD

    def group_of(self, record: dict) -> tuple[str, int]:
        m = metadata_of(record)
        if m.get("post_type") == "question":
            return str(m.get("post_id")), 0
        return str(m.get("parent_id")), 1  # answers after their question, in the dump's order

    def build(self, key: str, records: Iterable[dict], metrics: dict[str, float]) -> Iterator[Outcome]:
        records = list(records)  # this stage's rule reads its group more than once
        metas = [metadata_of(r) for r in records]
        bad = [(r, m) for r, m in zip(records, metas, strict=True) if m.get("post_type") not in ("question", "answer")
               or not isinstance(r.get("text"), str)]
        for r, _ in bad:
            yield Rejected(r["id"], "not a post", "needs metadata post_type question|answer, post_id, parent_id, "
                           "as `longforge eval import stackexchange` writes", json.dumps(r, default=str))
        posts = [(r, m) for r, m in zip(records, metas, strict=True) if (r, m) not in bad]
        questions = [(r, m) for r, m in posts if m["post_type"] == "question"]
        answers = [(r, m) for r, m in posts if m["post_type"] == "answer" and r["text"].strip()]
        empty = [(r, m) for r, m in posts if m["post_type"] == "answer" and not r["text"].strip()]
        for r, _ in empty:
            yield Dropped(r["id"], "empty answer", "deleted or empty body")
        if len(questions) != 1:
            why = "answer without its question" if not questions else f"{len(questions)} questions with id {key}"
            for r, _ in questions + answers:
                yield Dropped(r["id"], why, f"question {key}")
            return
        q, qm = questions[0]
        accepted = qm.get("accepted_answer_id")
        ids = [str(m.get("post_id")) for _, m in answers]
        askable = accepted is not None and str(accepted) in ids and len(answers) >= self.params.min_answers
        metrics["threads"] = metrics.get("threads", 0) + 1
        metrics["askable threads"] = metrics.get("askable threads", 0) + int(askable)
        yield {"id": f"q{key}", "text": q["text"], "tags": list(qm.get("tags") or []),
               "accepted_answer_id": str(accepted) if askable else None, "question_tokens": self.count(q["text"]),
               "answers": [{"id": pid, "text": r["text"], "tokens": self.count(r["text"]), "hash": _hash(r["text"])}
                           for pid, (r, _) in zip(ids, answers, strict=True)]}


@register
class BestAnswerPlan(GlobalStage):
    """Per question and setting, which answers of which threads an item shows, in which place."""

    name = "bestanswer_plan"
    Params = BestAnswerParams
    input_schema = THREAD
    expands = True

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return PIECE

    def summary_fields(self, upstream: RecordSchema) -> tuple[pa.Field, ...]:
        return (pa.field("tags", pa.list_(pa.string())), pa.field("question_tokens", pa.int64()),
                pa.field("accepted", pa.int32()), pa.field("answer_tokens", pa.list_(pa.int64())),
                pa.field("answer_hashes", pa.list_(pa.string())))

    def summarize(self, record: dict) -> dict:
        answers = record["answers"] or []
        acc = next((k for k, a in enumerate(answers) if a["id"] == record["accepted_answer_id"]), -1)
        return {"tags": record["tags"] or [], "question_tokens": record["question_tokens"], "accepted": acc,
                "answer_tokens": [a["tokens"] for a in answers], "answer_hashes": [a["hash"] for a in answers]}

    def added_fields(self) -> tuple[pa.Field, ...]:
        return (pa.field("bestanswer_uses", pa.list_(_USE)),)

    def decide(self, summaries: pa.Table, ctx: GlobalContext) -> GlobalResult:
        p: BestAnswerParams = self.params
        d = summaries.to_pydict()
        n = len(d["id"])
        uses: list[list[dict]] = [[] for _ in range(n)]
        by_tag: dict[str, list[int]] = {}
        for k, tags in enumerate(d["tags"]):
            for t in set(tags):
                by_tag.setdefault(t, []).append(k)
        overhead = len(core.best_answer_prompt("", []).split()) * 2  # the fixed lines, generously
        metrics: dict[str, float] = {}
        for q in sorted(range(n), key=lambda k: d["id"][k]):
            acc = d["accepted"][q]
            if acc < 0:
                continue
            own, seen = [], set()
            for a, h in enumerate(d["answer_hashes"][q]):
                if h not in seen:
                    seen.add(h)
                    own.append(a)
            if acc not in own:
                metrics["accepted answer repeats another"] = metrics.get("accepted answer repeats another", 0) + 1
                continue
            rng = seeded(self.seed, d["id"][q], "distractors")
            others = {k for t in set(d["tags"][q]) for k in by_tag[t] if k != q}
            ranked = sorted(others, key=lambda k: (-core.jaccard(d["tags"][q], d["tags"][k]), rng.random(), d["id"][k]))
            pool = [(k, a) for k in ranked for a in range(len(d["answer_tokens"][k]))]
            for setting in p.settings:
                tokens = overhead + d["question_tokens"][q] + sum(d["answer_tokens"][q][a] + p.candidate_overhead
                                                                  for a in own)
                if tokens > setting:
                    metrics[f"questions too long:{setting}"] = metrics.get(f"questions too long:{setting}", 0) + 1
                    continue
                chosen = [(q, a, "own") for a in own]
                hashes = set(seen)
                for k, a in pool:
                    h = d["answer_hashes"][k][a]
                    if h in hashes:
                        continue
                    t = d["answer_tokens"][k][a] + p.candidate_overhead
                    if tokens + t > setting:
                        break
                    hashes.add(h)
                    chosen.append((k, a, "distractor"))
                    tokens += t
                order = list(range(len(chosen)))
                seeded(self.seed, d["id"][q], setting, "order").shuffle(order)
                item = f"{d['id'][q]}@{setting}"
                uses[q].append({"item": item, "slot": 0, "answer": -1, "added": -1, "source": "question"})
                for slot, added in enumerate(order, 1):
                    k, a, source = chosen[added]
                    uses[k].append({"item": item, "slot": slot, "answer": a, "added": added, "source": source})
                metrics[f"planned items:{setting}"] = metrics.get(f"planned items:{setting}", 0) + 1
        dropped = {k: Dropped(d["id"][k], "not used", "no item shows this thread (no accepted answer, too long, or "
                              "no tag shared with an askable question)") for k in range(n) if not uses[k]}
        return GlobalResult(columns={"bestanswer_uses": uses}, dropped=dropped, metrics=metrics)

    def apply(self, record: dict, answer: dict, dropped: Dropped | None) -> Iterator[Outcome]:
        if dropped is not None:
            yield dropped
            return
        for use in answer["bestanswer_uses"]:
            a = record["answers"][use["answer"]] if use["answer"] >= 0 else None
            piece = {"post_id": a["id"], "text": a["text"], "tokens": a["tokens"], "accepted_answer_id": None} \
                if a else {"post_id": record["id"][1:], "text": record["text"], "tokens": record["question_tokens"],
                           "accepted_answer_id": record["accepted_answer_id"]}
            yield {"id": f"{use['item']}#{use['slot']}", "item": use["item"], "slot": use["slot"],
                   "added": use["added"], "source": use["source"], "tags": record["tags"], "thread": record["id"],
                   **piece}


@register
class BestAnswerItems(TokenCounter, GroupStage):
    """An item's pieces to one record, counted exactly and fitted to its setting."""

    name = "bestanswer_items"
    Params = BestAnswerParams
    input_schema = PIECE

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return BESTANSWER_ITEM

    def group_of(self, record: dict) -> tuple[str, int]:
        return record["item"], int(record["slot"])

    def build(self, key: str, records: Iterable[dict], metrics: dict[str, float]) -> Iterator[Outcome]:
        records = list(records)  # this stage's rule reads its group more than once
        p: BestAnswerParams = self.params
        question, candidates = records[0], records[1:]
        setting = int(key.rsplit("@", 1)[1])
        prompt = core.best_answer_prompt(question["text"], [c["text"] for c in candidates])
        tokens = self.count(prompt)
        while tokens > setting and any(c["source"] == "distractor" for c in candidates):
            over, removed = tokens - setting, 0
            while removed < over and any(c["source"] == "distractor" for c in candidates):
                last = max((c for c in candidates if c["source"] == "distractor"), key=lambda c: c["added"])
                candidates = [c for c in candidates if c is not last]
                removed += last["tokens"] + p.candidate_overhead
                yield Dropped(last["id"], "over the setting", f"{key}: the exact count is over {setting} tokens")
            prompt = core.best_answer_prompt(question["text"], [c["text"] for c in candidates])
            tokens = self.count(prompt)
        if not p.tolerance * setting <= tokens <= setting:
            metrics[f"outside window:{setting}"] = metrics.get(f"outside window:{setting}", 0) + 1
            for r in [question, *candidates]:
                yield Dropped(r["id"], "outside the window", f"{key}: {tokens} tokens, the window is "
                              f"[{int(p.tolerance * setting)}, {setting}]")
            return
        k = next(i for i, c in enumerate(candidates, 1) if c["post_id"] == question["accepted_answer_id"])
        n = len(candidates)
        instruction, material = prompt.split("\n\nThe question:\n", 1)
        context = "The question:\n" + material
        qid = question["thread"][1:]
        metrics[f"items:{setting}"] = metrics.get(f"items:{setting}", 0) + 1
        metrics[f"sum 1/n:{setting}"] = metrics.get(f"sum 1/n:{setting}", 0) + 1 / n
        metrics[f"candidates:{setting}"] = metrics.get(f"candidates:{setting}", 0) + n
        yield {
            "id": key, "_id": item_hash(key), "input": instruction, "context": context, "answers": [f"A{k}"],
            "length": english_words(instruction, context, f"A{k}"), "dataset": f"bestanswer_{bucket_name(setting)}",
            "language": "en", "all_classes": [f"A{i}" for i in range(1, n + 1)], "length_bucket": setting,
            "length_tokens": tokens,
            "meta": json.dumps({"tokenizer": p.tokenizer, "seed": self.seed, "setting": setting,
                                "tolerance": p.tolerance, "min_answers": p.min_answers}, sort_keys=True),
            "question_id": qid, "question": question["text"], "all_answers": [c["text"] for c in candidates],
            "answer": f"A{k}", "tags": question["tags"], "setting": setting, "num_choice": n,
            "accepted_answer_id": question["accepted_answer_id"], "candidate_ids": [c["post_id"] for c in candidates],
            "candidate_sources": [c["source"] for c in candidates], "prompt": prompt, "prompt_tokens": tokens,
        }

    def summarize_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        out = dict(sums)
        for name, v in sums.items():
            if name.startswith("sum 1/n:"):
                setting = name.split(":", 1)[1]
                made = sums.get(f"items:{setting}", 0)
                out[f"mean 1/n:{setting}"] = v / made if made else 0.0
                out[f"mean candidates:{setting}"] = sums.get(f"candidates:{setting}", 0) / made if made else 0.0
        return out
