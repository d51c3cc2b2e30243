"""Record accounting: per-stage counters, what a step removed and why, records as the rejects keep them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from catalog.accounting import reconciles  # noqa: F401 - the rule, where the driver looks for it
from pipelines.engine.steps import Plan
from schemas import REJECT
from stages.base import Dropped, Measured, Rejected, SideRow, Truncated

REMOVED_SCHEMA = pa.schema(list(REJECT.arrow) + [pa.field("payload", pa.string())])
# A key row also says whose it is (the record id), where that record is (row of the shard's records
# file) and what it holds (its content digest), so that the decision can be taken out of core and
# copies of one record told apart: see run_decide() and copy_drops().


@dataclass
class StageCounter:
    step: int
    stage: str
    shape: str
    n_in: int = 0
    n_out: int = 0
    rejected: int = 0
    dropped: int = 0
    inputs_with_output: int = 0
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)  # sums of the stage's Measured outcomes

    def measure(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.metrics[k] = self.metrics.get(k, 0) + v

    @classmethod
    def of(cls, step: int, ps, **counts) -> StageCounter:
        """The counter of planned stage ``ps`` in step ``step``, named and shaped by its adapter."""
        return cls(step, ps.label, ps.shape, **counts)

    def to_json(self) -> dict:
        return {"step": self.step, "stage": self.stage, "shape": self.shape, "in": self.n_in,
                "out": self.n_out, "rejected": self.rejected, "dropped": self.dropped,
                "inputs_with_output": self.inputs_with_output, "seconds": round(self.seconds, 6)}


def merge_stats(items: Iterable[dict], plan: Plan) -> list[dict]:
    """Sum per-shard statistics into one row per (step, stage), in plan order."""
    total: dict[tuple, dict] = {}
    for s in items:
        k = (s["step"], s["stage"])
        if k not in total:
            total[k] = dict(s)
        else:
            for f in ("in", "out", "rejected", "dropped", "inputs_with_output", "seconds"):
                total[k][f] += s[f]
    position = {ps.label: ps.index for ps in plan.stages}
    expands = {ps.label: ps.adapter.expands(ps.stage) for ps in plan.stages}  # the plan says, not the markers
    for row in total.values():
        row["expands"] = expands.get(row["stage"], False)
        row["reconciles"] = reconciles(row)
    return sorted(total.values(), key=lambda s: (s["step"], position.get(s["stage"], -1)))


def removed_row(stage: str, item: Rejected | Dropped | Truncated) -> dict:
    kind = "rejected" if isinstance(item, Rejected) else "truncated" if isinstance(item, Truncated) else "dropped"
    return {"stage": stage, "record_id": item.record_id, "reason": item.reason, "detail": item.detail,
            "kind": kind, "payload": getattr(item, "payload", None)}


def jsonable(value):
    """JSON for what records may hold besides plain values: numpy arrays (token ids) as lists."""
    return value.tolist() if isinstance(value, np.ndarray) else str(value)


def record_json(rec: dict) -> str:
    """A record as it is kept in the rejects output."""
    return json.dumps(rec, ensure_ascii=False, sort_keys=True, default=jsonable)


def route_outcomes(label: str, outcomes: Iterable, counter: StageCounter, removed: list[dict],
                   sides: dict[str, list[dict]] | None, source: dict | None = None) -> Iterator[dict]:
    """The one outcome classification of every shape: records are yielded and counted out; side-table
    rows go to ``sides``; measurements are summed on the counter; rejects and drops are counted and
    go to ``removed`` (a reject keeps ``source``, the record it came from, as its payload); a
    truncation note goes to ``removed`` and counts nothing (the record was used in part). The
    caller counts what went in."""
    for o in outcomes:
        if isinstance(o, dict):
            counter.n_out += 1
            yield o
        elif isinstance(o, SideRow):
            if sides is None:
                raise RuntimeError(f"stage {label} wrote a side-table row where none is kept")
            sides.setdefault(o.table, []).append(o.row)
        elif isinstance(o, Truncated):
            removed.append(removed_row(label, o))
        elif isinstance(o, Measured):
            counter.measure(o.values)
        else:
            if isinstance(o, Rejected):
                counter.rejected += 1
                if o.payload is None and source is not None:
                    o = Rejected(o.record_id, o.reason, o.detail, record_json(source))
            else:
                counter.dropped += 1
            removed.append(removed_row(label, o))
