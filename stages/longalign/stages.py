"""LongAlign as stages: ``self_instruct`` (long documents -> instruction rows in messages format,
through the generation interface), ``chat_tokenize`` (labels on assistant turns), and
``longalign_batches`` (packs with loss weights, or sorted batches). See stages.longalign.core."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from schemas import MESSAGE, REGISTRY, TEXT_RECORD, RecordSchema
from stages import register
from stages.base import (
    Dropped,
    GroupStage,
    Outcome,
    RecordStage,
    Rejected,
    Resources,
    SideRow,
    StageParams,
    TokenizerRef,
)
from stages.blocks.generation import GeneratorParams, open_generator, refusal, refused, with_call_counts
from stages.blocks.spill import GroupScratch
from stages.longalign import core

INSTRUCTION_ROW = REGISTRY.register(RecordSchema("longalign_row", 1, (
    pa.field("id", pa.string(), nullable=False),  # <document id>#q
    pa.field("messages", pa.list_(MESSAGE)),
    pa.field("source", pa.string()),
    pa.field("task_type", pa.string()),
    pa.field("language", pa.string()),
    pa.field("question", pa.string()),
    pa.field("generator", pa.string()),
    pa.field("length", pa.int64()),  # tokens of the messages' contents (length_tokenizer)
), doc="A long instruction row: the document and one question, answered by the generator."))

TOKEN_FIELDS = (pa.field("input_ids", pa.list_(pa.int32())), pa.field("labels", pa.list_(pa.int32())),
                pa.field("n_target", pa.int32()), pa.field("len", pa.int32()))

PACK = REGISTRY.register(RecordSchema("longalign_pack", 1, (
    pa.field("id", pa.string(), nullable=False),  # pack-<n>, in training order
    pa.field("input_ids", pa.list_(pa.int32())),  # L, padded after the last sequence
    pa.field("labels", pa.list_(pa.int32())),
    pa.field("weights", pa.list_(pa.float32())),  # 1/N_i on sequence i's targets
    pa.field("cu_seqlens", pa.list_(pa.int32())),
    pa.field("position_ids", pa.list_(pa.int32())),
    pa.field("n_seqs", pa.int32()),
    pa.field("seq_ids", pa.list_(pa.string())),
    pa.field("group", pa.int32()),  # which group of K packs (one optimizer step)
    pa.field("group_seq_count", pa.int32()),  # M of that group
    pa.field("group_pack_count", pa.int32()),  # K' of that group (K, or fewer for the last one)
), doc="A LongAlign pack of sequences with per-token loss weights and boundaries."))

SORTED_ROW = REGISTRY.register(RecordSchema("longalign_sorted_row", 1, (
    pa.field("id", pa.string(), nullable=False),
    pa.field("input_ids", pa.list_(pa.int32())),
    pa.field("labels", pa.list_(pa.int32())),
    pa.field("len", pa.int32()),
    pa.field("batch", pa.int32()),  # consecutive rows with one batch number form one global batch
    pa.field("position", pa.int64()),  # the row's place in the training order
), doc="A row of the sorted-batching stream, in training order."))


def _seeded(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big"))


class SelfInstructParams(GeneratorParams):
    max_document_chars: int = Field(24000, gt=0, description="documents are cut to this many characters")
    question_tokens: int = Field(200, gt=0)
    answer_tokens: int = Field(300, gt=0)
    temperature: float = Field(0.0, ge=0)
    asks: int = Field(3, ge=1, description="tries before a document without min_questions questions is dropped "
                      "[spec: re-ask or drop]")
    min_questions: int = Field(5, ge=1, description="questions a reply must list [spec: five]")
    reask_temperature: float = Field(0.7, gt=0, description="sampling temperature of the re-asks when "
                                     "temperature is 0 (greedy would repeat the same reply) [ours]")
    length_tokenizer: TokenizerRef = Field("smollm2", description="the tokenizer that counts a row's `length` (the "
                                  "trainer's, ideally) [LongAlign: ChatGLM3's]")
    batch_records: int = Field(4, gt=0, description="documents per checkpointed batch: a killed run never "
                               "generates for a finished batch again")


@register
class SelfInstruct(RecordStage):
    """Spec 3.1: per document a task type at random, five numbered questions, one of them at random,
    and its answer from the same generator. A per-record model stage on the runner's workers: the
    engine checkpoints each batch of documents, and generations go through the run's generation
    cache (synced with the catalog), so no question or answer is generated twice."""

    name = "self_instruct"
    Params = SelfInstructParams
    input_schema = TEXT_RECORD
    uses_generations = True

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return INSTRUCTION_ROW

    def resources(self) -> Resources:
        return Resources(batch_size=self.params.batch_records, device=self.params.device, model=True)

    def side_tables(self) -> dict[str, RecordSchema]:
        return {"messages": INSTRUCTION_ROW}  # the rows as generated, before any tokenisation

    def generator(self):
        return open_generator(self.params, self.services)

    def setup(self) -> None:
        self._gen = self.generator()

    @functools.cached_property
    def _length_tok(self):
        from gpu_jobs.models import load_tokenizer

        return load_tokenizer(self.params.length_tokenizer)

    def _ask(self, messages: list[dict], max_new_tokens: int, temperature: float, seed: int):
        """(generation, None) or (None, why it failed): a failed request rejects its document only."""
        from gpu_jobs.generate import GenerationError, GenParams

        try:
            return self._gen.generate_full(messages, GenParams(max_new_tokens=max_new_tokens,
                                                               temperature=temperature, seed=seed)), None
        except GenerationError as e:
            return None, str(e)[:500]

    def _refused(self, text: str) -> str | None:
        return refusal(text, self.params.refusal_patterns)

    def process(self, record: dict) -> Iterator[Outcome]:
        return with_call_counts(self._instruct(record), self._gen)

    def _instruct(self, record: dict) -> Iterator[Outcome]:
        p: SelfInstructParams = self.params
        rid = record["id"]
        rng = _seeded(self.seed, rid)
        task = core.TASK_TYPES[int(rng.integers(len(core.TASK_TYPES)))]
        doc = record["text"][:p.max_document_chars]
        questions: list[str] = []
        tries = []
        for attempt in range(p.asks):
            # a re-ask samples (another seed, a temperature above 0): greedy would repeat the reply
            temperature = p.temperature if attempt == 0 else max(p.temperature, p.reask_temperature)
            reply, error = self._ask(core.question_prompt(doc, task, record.get("language")), p.question_tokens,
                                     temperature, self.seed + attempt)
            if reply is None:
                yield Rejected(rid, "generation failed", f"questions: {error}")
                return
            if refused(reply, p.refusal_patterns):
                tries.append(f"refused ({reply.finish_reason})")
                continue
            questions = core.parse_questions(reply.text)
            if reply.finish_reason == "length" and questions:
                questions = questions[:-1]  # the last one may be cut mid-sentence
            if len(questions) >= p.min_questions:
                break
            tries.append(f"{len(questions)} questions ({reply.finish_reason})")
        if len(questions) < p.min_questions:
            yield Dropped(rid, f"fewer than {p.min_questions} questions", f"{p.asks} tries: {'; '.join(tries)}")
            return
        question = questions[int(rng.integers(len(questions)))]
        answer, error = self._ask(core.answer_prompt(doc, question), p.answer_tokens, p.temperature, self.seed)
        if answer is None:
            yield Rejected(rid, "generation failed", f"answer: {error}")
            return
        why_refused = refused(answer, p.refusal_patterns)
        if why_refused:
            yield Rejected(rid, "answer refused", why_refused)
            return
        if answer.finish_reason == "length":
            yield Rejected(rid, "answer cut by the token limit", f"{p.answer_tokens} new tokens (answer_tokens); "
                           "raise it to keep such answers")
            return
        if not answer.text.strip():
            yield Rejected(rid, "empty answer", f"finish_reason {answer.finish_reason}")
            return
        answer = answer.text
        row = {"id": f"{rid}#q", "messages": [{"role": "user", "content": f"{doc}\n\n{question}"},
                                              {"role": "assistant", "content": answer.strip()}],
               "source": record.get("source"), "task_type": task, "language": record.get("language"),
               "question": question, "generator": p.model}
        row["length"] = sum(len(self._length_tok.encode(m["content"], add_special_tokens=False).ids)
                            for m in row["messages"])
        yield SideRow("messages", row)
        yield row


class ChatTokenizeParams(StageParams):
    tokenizer: str = Field("smollm2-135m", description="a model whose tokenizer and chat template render the rows")
    max_len: int = Field(8192, gt=0, description="L [LongAlign: 65,536; LongWriter: 32,768]")
    overflow: Literal["skip", "truncate_right", "truncate_left_keep_head"] = Field(
        "skip", description="rows longer than L [LongAlign: truncate_right; LongWriter: skip]")


@register
class ChatTokenize(RecordStage):
    """Spec 3.2: the chat template turn by turn; labels on assistant turns only."""

    name = "chat_tokenize"
    Params = ChatTokenizeParams
    input_schema = RecordSchema("longalign_chat_input", 1, (pa.field("id", pa.string(), nullable=False),))

    def setup(self) -> None:
        from transformers import AutoTokenizer

        from gpu_jobs.lm import resolve_causal_lm

        self._tok = AutoTokenizer.from_pretrained(str(resolve_causal_lm(self.params.tokenizer)), local_files_only=True)

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return self.adding(upstream, "tokens", TOKEN_FIELDS)

    def tokenize(self, record: dict) -> dict | Dropped:
        messages = record.get("messages")
        if messages is None and record.get("metadata"):
            messages = json.loads(record["metadata"]).get("messages")
        if not isinstance(messages, list) or not messages:
            return Dropped(record["id"], "no messages", "")
        t = core.tokenize_chat(self._tok, messages)
        if t is None:
            return Dropped(record["id"], "nothing to learn", "no assistant tokens")
        p: ChatTokenizeParams = self.params
        t2 = core.apply_overflow(t, p.max_len, p.overflow)
        if t2 is None:
            return Dropped(record["id"], f"longer than {p.max_len} tokens ({p.overflow})", f"{len(t.input_ids)} tokens")
        return {"input_ids": t2.input_ids, "labels": t2.labels, "n_target": t2.n_target, "len": len(t2.input_ids)}

    def process(self, record: dict) -> Iterator[Outcome]:
        out = self.tokenize(record)
        yield out if isinstance(out, Dropped) else {**record, **out}


class _TooLong(list):
    """The rows no pack can hold, kept as (id, tokens) until the packs are written."""

    def append(self, row: dict) -> None:
        super().append((row["id"], len(row["input_ids"])))


class BatchesParams(StageParams):
    mode: Literal["pack", "sorted"] = "pack"
    max_len: int = Field(8192, gt=0, description="pack capacity L")
    packs_per_step: int = Field(8, gt=0, description="K: packs per global batch (GPUs x packs per GPU)")
    batch_size: int = Field(8, gt=0, description="sorted: rows per global batch B [reference: 8]")
    shuffle: bool = Field(True, description="pack: rows in seeded random order before packing")
    packing: Literal["next_fit", "first_fit_decreasing"] = Field(
        "next_fit", description="next_fit [reference, parity]; first_fit_decreasing over buffers of rows: "
        "fuller packs [spec 3.3, optional]")
    pad_id: int = 0
    reset_positions: bool = Field(False, description="position ids restart per sequence (reference: 0..L-1)")
    groups: int = Field(1, gt=0, description="pack groups, each packed on a worker on its own [ours; 1 = the "
                        "reference's one pass over all rows]")


@register
class LongAlignBatches(GroupStage):
    """Spec 3.3-3.5: packs with loss weights and boundaries (the last partial pack kept), or sorted
    batches (length-sorted groups of B, group order shuffled).

    A per-group stage: rows go to one of ``groups`` pack groups by a seeded hash of their id, and
    each pack group is packed (or sorted) on a worker in its own seeded random order. With
    ``groups: 1`` (the default) that is the reference's single pass over every row; more groups
    bound a worker's memory by a pack group, at the price of one partial pack (or one sorted-batch
    remainder) per group. Ids carry the pack group (``pack-<group>-<k>``), so the id order is the
    training order."""

    name = "longalign_batches"
    Params = BatchesParams
    input_schema = RecordSchema("tokenized_chat", 1, (pa.field("id", pa.string(), nullable=False),) + TOKEN_FIELDS)

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return PACK if self.params.mode == "pack" else SORTED_ROW

    def place_form(self) -> str | None:
        return "length" if self.params.mode == "sorted" else None

    def group_of(self, record: dict) -> tuple[str, int]:
        p: BatchesParams = self.params
        h = hashlib.sha256(f"{self.seed}:{record['id']}".encode()).digest()
        group = int.from_bytes(h[:8], "big") % p.groups
        if p.mode == "sorted":  # the engine hands the group over sorted by length, stably (spec 3.5)
            return f"{group:05d}", len(record["input_ids"])
        place = int.from_bytes(h[8:16], "big") >> 1 if p.shuffle else 0
        return f"{group:05d}", place  # place 0: the rows' own order (shard, row)

    def build(self, key: str, records: Iterable[dict], metrics: dict[str, float]) -> Iterator[Outcome]:
        """Read the group's stream once. Packs hold one step of ``packs_per_step`` packs (and
        ``first_fit_decreasing`` its buffer of rows); ``sorted`` gets its rows in length order from
        the engine (``group_of``'s place), spills them and reads the batches back shuffled."""
        if self.params.mode == "sorted":
            yield from self._sorted_batches(key, records, metrics)
        else:
            yield from self._packs(key, records, metrics)

    def _sorted_batches(self, key: str, records: Iterable[dict], metrics: dict[str, float]) -> Iterator[Outcome]:
        p: BatchesParams = self.params
        B = p.batch_size
        rng_seed = int.from_bytes(hashlib.sha256(f"{self.seed}:{key}".encode()).digest()[:4], "big")
        with GroupScratch() as scratch:
            rows = scratch.rows("rows", 1, "int64")
            last = 0
            for r in records:
                n = len(r["input_ids"])
                if n < last:
                    raise ValueError(f"longalign_batches (mode: sorted): group {key} reached the stage out of "
                                     "length order (group_of's place is the length); nothing was written for it")
                last = n
                rows.append(np.array([n]), (r["id"], r["input_ids"], r["labels"]))
            order, n_full = core.batch_order(len(rows), B, rng_seed if p.groups > 1 else self.seed)
            position = 0
            for g, first in enumerate(order.tolist()):
                for i in range(first * B, (first + 1) * B):
                    row_id, toks, labels = rows.payload(i)
                    yield {"id": row_id, "input_ids": toks, "labels": labels, "len": len(toks), "batch": g,
                           "position": position}
                    position += 1
            rest = len(rows) - n_full
            for i in range(n_full, len(rows)):
                yield Dropped(rows.payload(i)[0], "sorted-batching remainder", f"{rest} rows past the last full batch")
        for name, v in (("batches", len(order)), ("rows", position), ("remainder", rest)):
            metrics[name] = metrics.get(name, 0) + v

    def _packs(self, key: str, records: Iterable[dict], metrics: dict[str, float]) -> Iterator[Outcome]:
        p: BatchesParams = self.params
        L, K = p.max_len, p.packs_per_step
        skipped = _TooLong()
        rows = ({"id": r["id"], "input_ids": r["input_ids"], "labels": r["labels"]} for r in records)
        packer = core.next_fit if p.packing == "next_fit" else core.first_fit_decreasing
        step: list[list[dict]] = []  # the packs of one training step: their count of sequences is M
        sums = {"packs": 0, "sequences": 0, "tokens": 0}
        for members in packer(rows, lambda r: len(r["input_ids"]), L, skipped):
            step.append(members)
            if len(step) == K:
                yield from self._step(key, step, sums)
                step = []
        if step:
            yield from self._step(key, step, sums)
        for row_id, n in skipped:
            yield Dropped(row_id, f"longer than the pack capacity {L}", f"{n} tokens")
        sums["capacity"] = sums["packs"] * L
        for name, v in sums.items():
            metrics[name] = metrics.get(name, 0) + v

    def _step(self, key: str, step: list[list[dict]], sums: dict[str, int]) -> Iterator[dict]:
        """The records of one step's packs; ``group_seq_count`` is the step's sequences with targets."""
        p: BatchesParams = self.params
        L = p.max_len
        count = sum(1 for members in step for r in members if any(x != -100 for x in r["labels"]))
        for members in step:
            k = sums["packs"]
            toks = [r["input_ids"] for r in members]
            labels = [r["labels"] for r in members]
            pk = core.close_pack(range(len(members)), [len(t) for t in toks], L)
            flat = [t for seq in toks for t in seq]
            pad = L - len(flat)
            pos = ([q for seq in toks for q in range(len(seq))] + list(range(pad)) if p.reset_positions
                   else list(range(L)))
            yield {"id": f"pack-{key}-{k:06d}", "input_ids": flat + [p.pad_id] * pad,
                   "labels": [x for lab in labels for x in lab] + [-100] * pad,
                   "weights": core.pack_weights(labels, pk, L), "cu_seqlens": pk.cu_seqlens, "position_ids": pos,
                   "n_seqs": len(members), "seq_ids": [r["id"] for r in members], "group": k // p.packs_per_step,
                   "group_seq_count": count, "group_pack_count": len(step)}
            sums["packs"] += 1
            sums["sequences"] += len(members)
            sums["tokens"] += len(flat)

    def summarize_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        if self.params.mode == "sorted":
            return sums
        return {"packs": sums.get("packs", 0), "packs_per_step": self.params.packs_per_step,
                "sequences_per_pack": sums.get("sequences", 0) / max(1, sums.get("packs", 0)),
                "fill": sums.get("tokens", 0) / max(1, sums.get("capacity", 0))}
