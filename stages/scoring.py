"""Scoring jobs as a pipeline stage: every record scored by a causal LM (gpu_jobs.scoring), the
scores added to the record as a ``scores`` list and published as the ``scores`` artifact, which the
driver also appends to the catalog's ``scores`` table (keyed by record id, model and revision)."""

from __future__ import annotations

import json
from typing import Literal

import pyarrow as pa
from pydantic import Field, model_validator

from schemas import SCORE, SCORE_FIELDS, RecordSchema
from stages import register
from stages.base import DatasetContext, DatasetResult, DatasetStage, StageParams


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
    prefix: str = Field("", description="put before each metric name (short/, long/): several score stages "
                        "share the records' one `scores` list")

    @model_validator(mode="after")
    def _stride_within_window(self):
        if self.stride is not None and self.max_tokens is not None and self.stride > self.max_tokens:
            raise ValueError(f"stride ({self.stride}) is larger than max_tokens ({self.max_tokens}): tokens between "
                             "windows would never be scored")
        return self


@register
class Score(DatasetStage):
    """Model scores for every record (perplexity, response log-likelihood, segment PPL / attention)."""

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

    def settings(self):
        from gpu_jobs.scoring import ScoreSettings

        p: ScoreParams = self.params
        return ScoreSettings(p.job, max_tokens=p.max_tokens, stride=p.stride, token_budget=p.token_budget,
                             text_field=p.text_field, prompt_field=p.prompt_field, response_field=p.response_field,
                             context_field=p.context_field, instruction_field=p.instruction_field,
                             segment_tokens=p.segment_tokens, max_segments=p.max_segments)

    def run(self, ctx: DatasetContext) -> DatasetResult:
        from gpu_jobs.lm import load_causal_lm
        from gpu_jobs.scoring import score_part

        p: ScoreParams = self.params
        s = self.settings()
        required, optional = s.fields()  # the plan has checked that the required ones arrive
        cols = ["id", *required, *[c for c in optional if c in ctx.table.column_names]]
        records = ctx.table.select(cols).to_pylist()
        lm = load_causal_lm(p.model, device=p.device)
        values = score_part(lm, s, records) if records else []
        values = [{**v, "metric": p.prefix + v["metric"]} for v in values]
        by_id: dict[str, list[dict]] = {}
        for v in values:
            by_id.setdefault(v["sample_id"], []).append({"metric": v["metric"], "value": v["value"]})
        ids = ctx.table.column("id").to_pylist()
        if "scores" in ctx.table.column_names:  # an earlier score stage's list: add to it
            earlier = ctx.table.column("scores").to_pylist()
            column = pa.array([(e or []) + by_id.get(i, []) for i, e in zip(ids, earlier, strict=True)],
                              SCORE_FIELDS[0].type)
            table = ctx.table.set_column(ctx.table.column_names.index("scores"), SCORE_FIELDS[0], column)
        else:
            column = pa.array([by_id.get(i, []) for i in ids], SCORE_FIELDS[0].type)
            table = ctx.table.append_column(SCORE_FIELDS[0], column)
        settings = json.dumps({**s.identity(), "hash": s.hash()}, sort_keys=True)
        name = "scores" + (f"-{p.prefix.strip('/').replace('/', '-')}" if p.prefix.strip("/") else "")
        ctx.artifacts[name] = pa.table({
            "id": [f"{v['sample_id']}/{v['metric']}" for v in values],
            "sample_id": [v["sample_id"] for v in values], "job": [p.job] * len(values),
            "model": [p.model] * len(values), "revision": [lm.revision] * len(values),
            "metric": [v["metric"] for v in values], "value": [v["value"] for v in values],
            "settings": [settings] * len(values)}, schema=SCORE.arrow)
        m = ctx.metrics.setdefault(f"{self.name}:{p.prefix}{p.job}", {})
        m["samples_scored"] = len(by_id)
        ppl = [v["value"] for v in values if v["metric"].endswith("ppl") and ":" not in v["metric"]]
        if ppl:
            m["median_ppl"] = float(sorted(ppl)[len(ppl) // 2])
        return DatasetResult(table)
