"""GATEAU as stages: ``gateau_fields`` (messages -> context, instruction, response and the scoring
layout), ``hmg`` (the two models' response PPLs, :mod:`stages.gateau.hmg`), two ``score`` stages (segment
PPL, segment attention; see pipelines/gateau.yaml), then ``gateau_select`` (stages.gateau.core
over the stored scores).

``gateau_select`` is a global stage: it ranks the pool from the samples' scores on the driver, and
the workers publish every sample's inputs to the ranking (``gateau_scores/``) so that ``longforge
select`` re-ranks with another alpha, ratio or normalisation without a model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from schemas import DOCUMENT, MESSAGE, REGISTRY, SCORE_FIELDS, RecordSchema
from stages import register
from stages.base import (
    Dropped,
    GlobalContext,
    GlobalResult,
    GlobalStage,
    Outcome,
    RecordStage,
    Rejected,
    SideRow,
    StageParams,
)
from stages.gateau import core

GATEAU_FIELDS = (pa.field("context", pa.string()), pa.field("instruction", pa.string()),
                 pa.field("response", pa.string()), pa.field("prompt", pa.string()),
                 pa.field("messages", pa.list_(MESSAGE)))

GATEAU_SCORES = REGISTRY.register(RecordSchema("gateau_scores", 1, (
    pa.field("id", pa.string(), nullable=False),
    pa.field("messages", pa.list_(MESSAGE)),
    pa.field("ppl_short", pa.float64()),
    pa.field("ppl_long", pa.float64()),
    pa.field("seg_ppl", pa.list_(pa.float64())),
    pa.field("seg_attn", pa.list_(pa.float64())),  # layer-averaged, before renormalisation
    pa.field("segments", pa.list_(pa.int32())),  # which context segments (index j) the two lists hold
    pa.field("n_segments", pa.int32()),
    pa.field("sample_tokens", pa.int64()),  # prompt + response, the long model's tokenizer (HMG)
    pa.field("response_tokens", pa.int64()),  # the whole response (HMG)
    pa.field("cam_response_tokens", pa.int64()),  # the response CAM scored (cut at max_response_tokens)
    pa.field("scoring", pa.string()),  # JSON: each scoring stage's label, stage and parameters (models, windows)
    pa.field("hmg_raw", pa.float64()),
    pa.field("hmg", pa.float64()),
    pa.field("cas", pa.float64()),
    pa.field("cam", pa.float64()),
    pa.field("score", pa.float64()),
    pa.field("rank", pa.int64()),
    pa.field("selected", pa.bool_()),
), doc="Every GATEAU sample: the scores the ranking reads, and the ranking."))

SELECTED = REGISTRY.register(RecordSchema("gateau_selected", 1, (
    pa.field("id", pa.string(), nullable=False),
    pa.field("messages", pa.list_(MESSAGE)),
    pa.field("length", pa.int64()),  # tokens of the sample (prompt + response, the long model's tokenizer)
    pa.field("score", pa.float64()),
    pa.field("rank", pa.int64()),
), doc="A selected long SFT sample in messages format, best first."))


class FieldsParams(StageParams):
    layout: str = Field(core.LAYOUT, description="the scoring prompt; {context} and {instruction} are filled in")


@register
class GateauFields(RecordStage):
    """A chat sample's context, instruction and response (spec 2), and its scoring layout (spec 3.1)."""

    name = "gateau_fields"
    Params = FieldsParams
    input_schema = DOCUMENT

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return self.adding(upstream, "gateau", GATEAU_FIELDS)

    def process(self, record: dict):
        meta = json.loads(record.get("metadata") or "{}")
        messages = meta.get("messages")
        if not isinstance(messages, list):
            yield Rejected(record["id"], "no messages", "GATEAU reads chat samples in messages format")
            return
        parts = core.split_messages(messages)
        if parts is None:
            yield Rejected(record["id"], "no user and assistant turn", f"{len(messages)} turns")
            return
        context, instruction, response = parts
        if not response.strip():
            yield Rejected(record["id"], "empty response", "")
            return
        yield {**record, "context": context, "instruction": instruction, "response": response,
               "prompt": self.params.layout.format(context=context, instruction=instruction),
               "messages": [{"role": str(m.get("role")), "content": str(m.get("content") or "")} for m in messages]}


class SelectParams(StageParams):
    alpha: float = Field(0.8, ge=0, le=1, description="weight of HMG against CAM [paper: 0.8 / 0.7]")
    ratio: float = Field(0.1, gt=0, le=1, description="share kept, ceil(ratio * N) [paper: 0.1, 0.3, 0.5]")
    ppl_transform: Literal["raw", "log", "rank"] = "raw"
    pool_norm: Literal["softmax", "minmax", "rank"] = "softmax"
    importance: Literal["inv_ppl", "neg_ppl"] = "inv_ppl"
    cam_transform: Literal["one_minus_cos", "cos"] = "one_minus_cos"
    no_segments: Literal["median", "zero"] = "median"
    term_scale: Literal["minmax", "none"] = Field("minmax", description="both raw terms min-max scaled to [0, 1] "
                                                  "over the pool before pool_norm, so alpha weighs like against "
                                                  "like [ours; 'none': the code]; UNVERIFIED")
    short_prefix: str = Field("short/", description="metric prefix of the short-window response PPL")
    long_prefix: str = Field("long/", description="metric prefix of the long-window response PPL")
    segment_prefix: str = Field("", description="metric prefix of segment_ppl:* and segment_attention:*")

    def options(self) -> core.SelectOptions:
        return core.SelectOptions(self.alpha, self.ratio, self.ppl_transform, self.pool_norm, self.importance,
                                  self.cam_transform, self.no_segments, self.term_scale)


def collect(table: pa.Table, p: SelectParams) -> dict[str, list]:
    """The ranking's inputs from the records' ``scores`` lists."""
    out: dict[str, list] = {k: [] for k in ("id", "ppl_short", "ppl_long", "seg_ppl", "seg_attn", "segments",
                                            "n_segments", "sample_tokens", "response_tokens", "cam_response_tokens")}
    for rid, scores in zip(table.column("id").to_pylist(), table.column("scores").to_pylist(), strict=True):
        s = {x["metric"]: x["value"] for x in scores}
        try:
            short, long_ = s[f"{p.short_prefix}response_ppl"], s[f"{p.long_prefix}response_ppl"]
        except KeyError as e:
            raise ValueError(f"sample {rid} has no {e.args[0]} score: gateau_select needs the response "
                             f"perplexities of both models (an hmg stage, or score stages with prefixes "
                             f"{p.short_prefix!r}, {p.long_prefix!r})") from None
        n_short = s.get(f"{p.short_prefix}response_scored_tokens")
        n_long = s.get(f"{p.long_prefix}response_scored_tokens")
        if n_short != n_long:
            raise ValueError(f"sample {rid}: the short model's perplexity is over {n_short} response tokens, the long "
                             f"one's over {n_long}: HMG subtracts perplexities of the same tokens; use the hmg stage "
                             "(or give both score stages the same model family and max_tokens)")
        ppl_j = {int(k.rsplit(":", 1)[1]): v for k, v in s.items() if k.startswith(f"{p.segment_prefix}segment_ppl:")}
        att_j = {int(k.rsplit(":", 1)[1]): v for k, v in s.items()
                 if k.startswith(f"{p.segment_prefix}segment_attention:")}
        js = sorted(set(ppl_j) & set(att_j))
        out["id"].append(rid)
        out["ppl_short"].append(short)
        out["ppl_long"].append(long_)
        out["seg_ppl"].append([ppl_j[j] for j in js])
        out["seg_attn"].append([att_j[j] for j in js])
        out["segments"].append(js)
        out["n_segments"].append(len(js))
        as_int = lambda v: None if v is None else int(v)  # noqa: E731
        out["sample_tokens"].append(as_int(s.get(f"{p.long_prefix}sample_tokens")))
        out["response_tokens"].append(as_int(s.get(f"{p.long_prefix}response_tokens")))
        out["cam_response_tokens"].append(as_int(s.get(f"{p.segment_prefix}response_tokens")))
    return out


def ranked_tables(inputs: dict[str, list], o: core.SelectOptions) -> tuple[pa.Table, pa.Table]:
    """(every sample with its scores and rank, the selected samples best first)."""
    r = core.rank(inputs["id"], np.array(inputs["ppl_short"]), np.array(inputs["ppl_long"]), inputs["seg_ppl"],
                  inputs["seg_attn"], o)
    scores = pa.table({**inputs, "hmg_raw": r.hmg_raw, "hmg": r.hmg, "cas": r.cas, "cam": r.cam, "score": r.score,
                       "rank": r.rank, "selected": r.selected}, schema=GATEAU_SCORES.arrow)
    meta = {b"longforge.gateau": json.dumps({**o.as_dict(), "spreads": r.spreads()}, sort_keys=True).encode()}
    scores = scores.replace_schema_metadata({**scores.schema.metadata, **meta})
    order = np.argsort(r.rank, kind="stable")
    chosen = [int(i) for i in order if r.selected[i]]
    selected = pa.table({"id": [inputs["id"][i] for i in chosen], "messages": [inputs["messages"][i] for i in chosen],
                         "length": [inputs["sample_tokens"][i] for i in chosen],
                         "score": [float(r.score[i]) for i in chosen], "rank": [int(r.rank[i]) for i in chosen]},
                        schema=SELECTED.arrow)
    return scores, selected.replace_schema_metadata({**selected.schema.metadata, **meta})


@register
class GateauSelect(GlobalStage):
    """Rank by alpha * HMG + (1 - alpha) * CAM, both pool-normalised, and keep the top ceil(ratio * N).

    A global stage: the driver sees each sample's id, its ``scores`` list and its length in
    characters (for the HMG-length correlation the spec asks to report), ranks the pool, and the
    workers write every sample with its ranking to ``gateau_scores`` and keep the selected ones."""

    name = "gateau_select"
    Params = SelectParams
    input_schema = RecordSchema("gateau_scored", 1, (pa.field("id", pa.string(), nullable=False),
                                                      GATEAU_FIELDS[4], SCORE_FIELDS[0]))

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return SELECTED

    def summary_fields(self, upstream: RecordSchema) -> tuple[pa.Field, ...]:
        return (SCORE_FIELDS[0], pa.field("chars", pa.int64()))

    def see_upstream(self, upstream: list) -> None:
        """The scoring stages before this one (models, windows, extensions): recorded with every sample."""
        scoring = [{"label": label, "stage": st.name, "params": st.params.model_dump(mode="json")}
                   for label, st in upstream if st.name in ("hmg", "score")]
        self._scoring = json.dumps(scoring, sort_keys=True)

    def summarize(self, record: dict) -> dict:
        return {"scores": record["scores"], "chars": sum(len(m.get("content") or "") for m in record["messages"])}

    def added_fields(self) -> tuple[pa.Field, ...]:
        return tuple(f for f in GATEAU_SCORES.fields if f.name not in ("id", "messages"))

    def decide(self, summaries: pa.Table, ctx: GlobalContext) -> GlobalResult:
        p: SelectParams = self.params
        inputs = collect(summaries, p)
        r = core.rank(inputs["id"], np.array(inputs["ppl_short"]), np.array(inputs["ppl_long"]), inputs["seg_ppl"],
                      inputs["seg_attn"], p.options())
        columns = {k: inputs[k] for k in ("ppl_short", "ppl_long", "seg_ppl", "seg_attn", "segments", "n_segments",
                                          "sample_tokens", "response_tokens", "cam_response_tokens")}
        columns["scoring"] = [getattr(self, "_scoring", "[]")] * len(inputs["id"])
        columns.update({"hmg_raw": r.hmg_raw, "hmg": r.hmg, "cas": r.cas, "cam": r.cam, "score": r.score,
                        "rank": r.rank, "selected": r.selected})
        columns = {k: pa.array(np.asarray(v).tolist() if isinstance(v, np.ndarray) else v) for k, v in columns.items()}
        dropped = {k: Dropped(i, "below the selection cut", f"rank {int(r.rank[k])}")
                   for k, i in enumerate(inputs["id"]) if not r.selected[k]}
        metrics = {"pool": len(inputs["id"]), "selected": int(np.sum(r.selected)), "alpha": p.alpha, "ratio": p.ratio,
                   "samples_without_segments": int(sum(1 for x in inputs["seg_ppl"] if not x)), **r.spreads()}
        hmg = np.asarray(r.hmg_raw, dtype=np.float64)
        tokens = inputs["sample_tokens"]
        unit, lengths = (("tokens", np.asarray(tokens, np.float64)) if None not in tokens else
                         ("chars", summaries.column("chars").to_numpy().astype(np.float64)))
        if len(hmg) > 2 and np.std(hmg) > 0 and np.std(lengths) > 0:  # spec 5: report it (in tokens when known)
            metrics[f"hmg_length_correlation_{unit}"] = float(np.corrcoef(hmg, lengths)[0, 1])
        return GlobalResult(columns=columns, dropped=dropped, metrics=metrics)

    def side_tables(self) -> dict[str, RecordSchema]:
        return {"gateau_scores": GATEAU_SCORES}  # every sample and its ranking: what re-selection reads

    def apply(self, record: dict, answer: dict, dropped: Dropped | None) -> Iterator[Outcome]:
        yield SideRow("gateau_scores", {"id": record["id"], "messages": record["messages"], **answer})
        if dropped is not None:
            yield dropped
        else:
            yield {"id": record["id"], "messages": record["messages"], "length": answer["sample_tokens"],
                   "score": answer["score"], "rank": answer["rank"]}


def reselect(gateau_output: str, options: core.SelectOptions) -> tuple[pa.Table, pa.Table]:
    """Rank again from a gateau run's stored scores (``gateau_scores/``): no model is loaded."""
    from pathlib import Path

    import pyarrow.parquet as pq

    folder = Path(gateau_output).expanduser()
    folder = folder / "gateau_scores" if (folder / "gateau_scores").is_dir() else folder
    files = sorted((folder / "data").glob("*.parquet")) or sorted(folder.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no gateau_scores Parquet under {gateau_output} (the output of pipelines/gateau.yaml)")
    t = pq.read_table([str(f) for f in files]).sort_by([("id", "ascending")])
    inputs = {k: t.column(k).to_pylist() for k in ("id", "messages", "ppl_short", "ppl_long", "seg_ppl", "seg_attn",
                                                    "segments", "n_segments", "sample_tokens", "response_tokens",
                                                    "cam_response_tokens", "scoring")}
    return ranked_tables(inputs, options)
