"""Scoring jobs as a pipeline stage: every record scored by a causal LM (gpu_jobs.scoring) on the
runner's workers, the scores added to the record as a ``scores`` list and written to the ``scores``
side table, which is published as an artifact and appended to the catalog's ``scores`` table
(keyed by record id, model and revision)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Literal

import pyarrow as pa
from pydantic import Field, model_validator

from schemas import SCORE, SCORE_FIELDS, RecordSchema
from stages import register
from stages.base import Outcome, RecordStage, Rejected, Resources, SideRow, StageParams


class RopeParams(StageParams):
    kind: Literal["linear", "dynamic", "yarn"] = Field(description="transformers' rope type")
    factor: float = Field(gt=1, description="the window becomes factor x the trained positions")
    original_positions: int | None = Field(None, gt=1, description="the trained positions (default: the "
                                           "checkpoint's max_position_embeddings)")

    def extension(self):
        from gpu_jobs.lm import RopeExtension

        return RopeExtension(self.kind, self.factor, self.original_positions)


class ScoreParams(StageParams):
    job: Literal["perplexity", "response-loglik", "segment-ppl", "segment-attention"] = "perplexity"
    model: str = Field("smollm2-135m", description="alias (smollm2-135m, gemma3-270m), local folder or cached Hub id")
    max_tokens: int | None = Field(None, gt=1, description="window (default: the model's positions)")
    stride: int | None = Field(None, gt=0, description="perplexity: sliding-window stride (default: half the window)")
    token_budget: int = Field(8192, gt=0, description="padded tokens per batch")
    text_field: str = "text"
    prompt_field: str = "prompt"
    response_field: str = "response"
    context_field: str = "context"
    instruction_field: str = "instruction"
    segment_tokens: int = Field(128, gt=0)
    max_segments: int = Field(500, gt=0)
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda[:N]")
    batch_records: int = Field(32, gt=0, description="records per model batch: the unit a killed run never "
                               "scores again (the token budget still sets each forward pass's size)")
    prefix: str = Field("", description="put before each metric name (short/, long/): several score stages "
                        "share the records' one `scores` list")
    rope: RopeParams | None = Field(None, description="a training-free RoPE extension of the model (linear, "
                                    "dynamic NTK or YaRN through its config); the default window becomes factor x "
                                    "its trained positions [gateau 3.2: the short model is extended]")

    @model_validator(mode="after")
    def _stride_within_window(self):
        if self.stride is not None and self.max_tokens is not None and self.stride >= self.max_tokens:
            raise ValueError(f"stride ({self.stride}) is not smaller than max_tokens ({self.max_tokens}): the first "
                             "token of each later window would never be scored; use a stride below the window")
        return self


@register
class Score(RecordStage):
    """Model scores for every record (perplexity, response log-likelihood, segment PPL / attention).

    A per-record model stage: the model loads once per worker in ``setup()``, records are scored
    ``batch_records`` at a time (padded to the token budget inside), each finished batch is
    checkpointed by the engine, and each score also goes to the ``scores`` side table with its
    model, revision and settings (which the driver appends to the catalog)."""

    name = "score"
    Params = ScoreParams
    input_schema = RecordSchema("scored_record", 1, (pa.field("id", pa.string(), nullable=False),))

    def __init__(self, params: ScoreParams | None = None, seed: int = 0):
        super().__init__(params, seed)
        required, _ = self.settings().fields()
        # Fields named by the parameters: a pipeline that lacks them fails before any work.
        self.input_schema = RecordSchema("score_input", 1, (pa.field("id", pa.string(), nullable=False),)
                                         + tuple(pa.field(n, pa.string()) for n in required))

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return self.adding(upstream, "scores", SCORE_FIELDS)

    def resources(self) -> Resources:
        p: ScoreParams = self.params
        return Resources(batch_size=p.batch_records, device=p.device, model=True)

    def table_name(self) -> str:
        p: ScoreParams = self.params
        return "scores" + (f"-{p.prefix.strip('/').replace('/', '-')}" if p.prefix.strip("/") else "")

    def side_tables(self) -> dict[str, RecordSchema]:
        return {self.table_name(): SCORE}

    def settings(self):
        from gpu_jobs.scoring import ScoreSettings

        p: ScoreParams = self.params
        return ScoreSettings(p.job, max_tokens=p.max_tokens, stride=p.stride, token_budget=p.token_budget,
                             text_field=p.text_field, prompt_field=p.prompt_field, response_field=p.response_field,
                             context_field=p.context_field, instruction_field=p.instruction_field,
                             segment_tokens=p.segment_tokens, max_segments=p.max_segments,
                             rope=p.rope.extension() if p.rope else None)

    def setup(self) -> None:
        from gpu_jobs.lm import load_causal_lm

        p: ScoreParams = self.params
        self._lm = load_causal_lm(p.model, device=p.device, rope=p.rope.extension() if p.rope else None)
        s = self.settings()
        self._settings_json = json.dumps({**s.identity(), "hash": s.hash()}, sort_keys=True)

    def process_batch(self, records: list[dict]) -> list[list[Outcome]]:
        from gpu_jobs.scoring import score_part

        p: ScoreParams = self.params
        s = self.settings()
        why = [s.invalid(r) for r in records]
        valid = [r for r, w in zip(records, why, strict=True) if w is None]
        required, optional = s.fields()
        values = score_part(self._lm, s, [{k: r.get(k) for k in ["id", *required, *optional]} for r in valid]) \
            if valid else []
        by_id: dict[str, list[dict]] = {}
        for v in values:
            by_id.setdefault(v["sample_id"], []).append({"metric": p.prefix + v["metric"], "value": v["value"]})
        table = self.table_name()
        out: list[list[Outcome]] = []
        for r, w in zip(records, why, strict=True):
            if w is not None:
                out.append([Rejected(r["id"], w[0], w[1])])
                continue
            mine = by_id.get(r["id"], [])
            sides = [SideRow(table, {"id": f"{r['id']}/{m['metric']}", "sample_id": r["id"], "job": p.job,
                                     "model": p.model, "revision": self._lm.revision, "metric": m["metric"],
                                     "value": m["value"], "settings": self._settings_json}) for m in mine]
            out.append([{**r, "scores": list(r.get("scores") or []) + mine}, *sides])
        return out

    def process(self, record: dict) -> Iterator[Outcome]:
        yield from self.process_batch([record])[0]
