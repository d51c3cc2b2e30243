"""HMG as one model stage (spec gateau.md 3.2): the response perplexity of a short-window model and
of its long-window sibling over the same response tokens.

Both models see the last ``max_tokens`` tokens of the sample (left truncation, the response start
found after the cut). The short model reaches that window through a training-free RoPE extension
(dynamic NTK by default, the factor = window / its trained positions), as the paper's default;
``short_window`` instead gives it only the last tokens that fit its window: a stand-in for when no
homologous pair is at hand (one model at two windows), recorded with the scores. Either way both
perplexities are taken over one set of response tokens: the last ones inside both windows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Literal

import pyarrow as pa
from pydantic import Field, model_validator

from schemas import SCORE, SCORE_FIELDS, RecordSchema
from stages import register
from stages.base import Outcome, RecordStage, Rejected, Resources, SideRow, StageParams


class HmgParams(StageParams):
    short_model: str = Field("NousResearch/Llama-2-7b-hf", description="θ_A, the short-window model [paper: "
                             "LLaMA-2-7B base, 4k]")
    long_model: str = Field("THUDM/LongAlign-7B-64k-base", description="θ_B, its long-window sibling [paper]")
    max_tokens: int | None = Field(None, gt=1, description="the window both models see, the last tokens of the "
                                   "sample [paper: 64000]; default: the long model's positions")
    short_extension: Literal["dynamic", "linear", "yarn", "none"] = Field(
        "dynamic", description="RoPE extension of the short model up to the window [paper: a consistent dynamic "
        "NTK patch; 'none' runs plain RoPE past its trained length]")
    short_factor: float | None = Field(None, gt=1, description="the extension's factor (default: window / the "
                                       "short model's trained positions, when above 1)")
    short_window: int | None = Field(None, gt=1, description="stand-in: the short model sees only its last "
                                     "short_window tokens, unextended [ours: one model at two windows]")
    prompt_field: str = "prompt"
    response_field: str = "response"
    short_prefix: str = "short/"
    long_prefix: str = "long/"
    bos: bool = Field(True, description="the tokenizer's BOS first")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda[:N]")
    batch_records: int = Field(8, gt=0, description="records per model batch (the unit never scored twice)")
    token_budget: int = Field(8192, gt=0, description="padded tokens per forward pass")

    @model_validator(mode="after")
    def _one_way_to_shorten(self):
        if self.short_window is not None and self.short_extension != "none":
            raise ValueError("short_window (the short model sees only its last tokens) and short_extension (it sees "
                             "the whole window through a RoPE extension) exclude each other: set short_extension: "
                             "none with short_window")
        if self.short_window is not None and self.max_tokens is not None and self.short_window > self.max_tokens:
            raise ValueError(f"short_window ({self.short_window}) is larger than max_tokens ({self.max_tokens})")
        return self


@register
class Hmg(RecordStage):
    """Homologous models' guidance: PPL_short and PPL_long of each sample's response, one set of
    tokens, both models loaded once per worker."""

    name = "hmg"
    Params = HmgParams
    input_schema = RecordSchema("hmg_input", 1, (pa.field("id", pa.string(), nullable=False),
                                                 pa.field("prompt", pa.string()), pa.field("response", pa.string())))

    def __init__(self, params: HmgParams | None = None, seed: int = 0):
        super().__init__(params, seed)
        p: HmgParams = self.params
        self.input_schema = RecordSchema("hmg_input", 1, (  # fields named by the parameters: checked before work
            pa.field("id", pa.string(), nullable=False), pa.field(p.prompt_field, pa.string()),
            pa.field(p.response_field, pa.string())))

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return self.adding(upstream, "scores", SCORE_FIELDS)

    def resources(self) -> Resources:
        return Resources(batch_size=self.params.batch_records, device=self.params.device, model=True)

    def side_tables(self) -> dict[str, RecordSchema]:
        return {"scores-hmg": SCORE}

    def setup(self) -> None:
        from gpu_jobs.hmg import same_tokenizer
        from gpu_jobs.lm import RopeExtension, open_causal_lm, trained_positions

        p: HmgParams = self.params
        self._long = open_causal_lm(p.long_model, device=p.device)
        window = p.max_tokens or self._long.max_positions
        trained = trained_positions(p.short_model)
        factor = p.short_factor or (window / trained if window > trained else None)
        rope = RopeExtension(p.short_extension, factor) if p.short_extension != "none" and factor else None
        if p.short_model == p.long_model and rope is None:
            self._short = self._long  # one model at two windows: loaded once
        else:
            self._short = open_causal_lm(p.short_model, device=p.device, rope=rope)
        if not same_tokenizer(self._short.tokenizer, self._long.tokenizer):
            raise ValueError(f"'{p.short_model}' and '{p.long_model}' are not homologous: their tokenizers differ, so "
                             "their perplexities cannot be taken over the same response tokens; give two checkpoints "
                             "of one model family")
        self._windows = (p.short_window or window, window)
        self._settings = {"job": "hmg", "short_model": p.short_model, "long_model": p.long_model,
                          "window": window, "short_window": self._windows[0], "short_trained_positions": trained,
                          "short_rope": {"kind": rope.kind, "factor": rope.factor} if rope else None,
                          "bos": p.bos, "truncation": "left", "scored": "the response tokens inside both windows"}

    def process_batch(self, records: list[dict]) -> list[list[Outcome]]:
        from gpu_jobs.hmg import hmg_scores

        p: HmgParams = self.params
        why = [self._invalid(r) for r in records]
        valid = [r for r, w in zip(records, why, strict=True) if w is None]
        scored = iter(hmg_scores(self._short, self._long, valid, self._windows, p.prompt_field, p.response_field,
                                 p.bos, p.token_budget) if valid else [])
        settings = json.dumps(self._settings, sort_keys=True)
        out: list[list[Outcome]] = []
        for r, w in zip(records, why, strict=True):
            if w is not None:
                out.append([Rejected(r["id"], *w)])
                continue
            s = next(scored)
            common = {k: float(s[k]) for k in ("response_tokens", "response_scored_tokens", "sample_tokens",
                                               "prompt_tokens_cut")}
            mine = []
            for role, prefix, lm in (("short", p.short_prefix, self._short), ("long", p.long_prefix, self._long)):
                values = {**s[role], **common} if role in s else common
                mine += [(lm, {"metric": prefix + k, "value": float(v)}) for k, v in sorted(values.items())]
            sides = [SideRow("scores-hmg", {"id": f"{r['id']}/{m['metric']}", "sample_id": r["id"], "job": "hmg",
                                            "model": lm.name, "revision": lm.revision, "metric": m["metric"],
                                            "value": m["value"], "settings": settings}) for lm, m in mine]
            out.append([{**r, "scores": list(r.get("scores") or []) + [m for _, m in mine]}, *sides])
        return out

    def _invalid(self, record: dict) -> tuple[str, str] | None:
        for f in (self.params.prompt_field, self.params.response_field):
            v = record.get(f)
            if not isinstance(v, str) or not v.strip():
                return "empty text", f"'{f}' is empty or missing"
        return None

    def process(self, record: dict) -> Iterator[Outcome]:
        yield from self.process_batch([record])[0]
