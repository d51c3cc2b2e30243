"""Ada-LEval's TSort as a stage (spec ../shared/specs/ada-leval.md 4): one long document in, up
to ``items_per_document`` items per length setting out, each a LongBench-style evaluation record
(spec eval-formats.md) with the TSort fields beside it. The pure parts are in
:mod:`stages.adaleval.core`."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow as pa
from pydantic import Field

from schemas import REGISTRY, RecordSchema
from stages import register
from stages.adaleval import core
from stages.base import Dropped, Measured, Outcome, RecordStage, Rejected
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

TSORT_ITEM = REGISTRY.register(RecordSchema("tsort_item", 1, LONGBENCH_FIELDS + (
    pa.field("book_id", pa.string()),
    pa.field("para_offset", pa.list_(pa.int64())),  # first paragraph of each segment, in original order
    pa.field("answer", pa.list_(pa.int64())),  # per original segment, its shown label: a permutation of 1..n
    pa.field("n_segments", pa.int32()),
    pa.field("segments", pa.list_(pa.string())),  # in shown order (Segment 1 first)
    pa.field("context_before", pa.string()),
    pa.field("context_after", pa.string()),
    pa.field("prompt", pa.string()),
    pa.field("prompt_tokens", pa.int64()),
), doc="An Ada-LEval TSort item: shuffled consecutive segments of a book between their context."))


class TSortParams(LengthParams):
    settings: tuple[int, ...] = Field((2048, 8192, 32768), description="nominal prompt lengths in tokens "
                                      "[paper: 1k, 2k, 4k, 8k, 16k, 32k, 64k, 128k]")
    n_segments: int = Field(core.N_SEGMENTS, ge=2, le=9, description="[4: the evaluator's permutations]")
    items_per_document: int = Field(5, gt=0, description="items per document and setting, at most [ours: M=5]")
    tries_per_item: int = Field(8, gt=0, description="random starts tried per wanted item")
    min_paragraph_tokens: int = Field(20, ge=1, description="shorter paragraphs are left out [ours]")
    fill: float = Field(0.85, gt=0, le=1, description="blocks are sized to fill this share of the setting [ours]")


@register
class TSortItems(TokenCounter, RecordStage):
    """Per document and setting: whole-paragraph blocks (context, n segments, context) from random
    starts, the segments shuffled, the prompt counted by the named tokenizer and kept when it lies in
    the setting's window; at most ``items_per_document`` items, none twice."""

    name = "tsort_items"
    Params = TSortParams
    expands = True
    input_schema = RecordSchema("book", 1, (pa.field("id", pa.string(), nullable=False), pa.field("text", pa.string())))

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return TSORT_ITEM

    def process(self, record: dict) -> Iterator[Outcome]:
        p: TSortParams = self.params
        rid, text = record["id"], record.get("text")
        if not isinstance(text, str) or not text.strip():
            yield Rejected(rid, "empty document", "'text' is empty or missing")
            return
        n = p.n_segments
        overhead = self.count(core.tsort_prompt("", [""] * n, ""))
        smallest = (p.settings[0] * p.fill - overhead) / (n + 2)
        paras = core.clean_paragraphs(text, self.count, p.min_paragraph_tokens, split_over=max(int(smallest), 1))
        counts = [self.count(x) for x in paras]
        made = 0
        for setting in p.settings:
            block = int((setting * p.fill - overhead) / (n + 2))
            if block < 1 or sum(counts) < (n + 2) * block:
                continue  # the document is too short for this setting
            rng = seeded(self.seed, rid, setting)
            starts = rng.sample(range(len(paras)), min(len(paras), p.items_per_document * p.tries_per_item))
            keys, outside = set(), 0
            for start in starts:
                if len(keys) == p.items_per_document:
                    break
                blocks = core.tsort_blocks(counts, start, block, n)
                if blocks is None:
                    continue
                offsets = tuple(b[0] for b in blocks[1:-1])
                if offsets in keys:
                    continue
                shown = list(range(n))
                rng.shuffle(shown)
                segments = ["\n".join(paras[i] for i in blocks[1 + s]) for s in shown]
                before = "\n".join(paras[i] for i in blocks[0])
                after = "\n".join(paras[i] for i in blocks[-1])
                prompt = core.tsort_prompt(before, segments, after)
                tokens = self.count(prompt)
                if not p.tolerance * setting <= tokens <= setting:
                    outside += 1
                    continue
                keys.add(offsets)
                yield self._item(record, setting, offsets, shown, segments, before, after, prompt, tokens, block)
            made += len(keys)
            yield Measured({f"items:{setting}": len(keys), f"outside window:{setting}": outside})
        if not made:
            yield Dropped(rid, "no TSort item", f"{sum(counts)} tokens in {len(paras)} paragraphs for settings "
                          f"{list(p.settings)}")

    def _item(self, record, setting, offsets, shown, segments, before, after, prompt, tokens, block) -> dict:
        p: TSortParams = self.params
        answer = core.tsort_answer(shown)
        key = f"{record['id']}_{'_'.join(map(str, offsets))}"
        instruction, material = prompt.split("\n\nBeginning of the passage:\n", 1)
        context = "Beginning of the passage:\n" + material
        answers = [json.dumps(answer)]
        language = record.get("language") or script_language(record["text"])
        return {
            "id": f"{key}@{setting}", "_id": item_hash(f"{key}@{setting}"),
            "input": instruction, "context": context, "answers": answers,
            "length": longbench_length(language, instruction, context, *answers),
            "dataset": f"tsort_{bucket_name(setting)}", "language": language, "all_classes": None,
            "length_bucket": setting, "length_tokens": tokens,
            "meta": json.dumps({"tokenizer": p.tokenizer, "seed": self.seed, "setting": setting,
                                "block_tokens": block, "fill": p.fill, "tolerance": p.tolerance,
                                "source": record.get("source")}, sort_keys=True),
            "book_id": record["id"], "para_offset": list(offsets), "answer": answer, "n_segments": len(shown),
            "segments": segments, "context_before": before, "context_after": after, "prompt": prompt,
            "prompt_tokens": tokens,
        }
