"""The engine's computed-ahead batches (``Resources(ahead=True)``): the same outcomes in the same
order as one batch at a time, the work done off the caller's thread, and errors not swallowed."""

from __future__ import annotations

import threading

import pytest

from pipelines.engine.accounting import StageCounter
from pipelines.engine.plan import PlannedStage
from pipelines.engine.shapes.record import apply_record_stage
from schemas import TEXT_RECORD
from stages.base import Dropped, RecordStage, Resources, StageParams


class Doubler(RecordStage):
    """Keeps records with an even number, twice; drops the rest (a stand-in for a tokenizer stage)."""

    name = "doubler_for_test"
    input_schema = TEXT_RECORD

    def __init__(self, ahead: bool, fail_at: int | None = None):
        super().__init__(StageParams(), 0)
        self.ahead, self.fail_at, self.threads = ahead, fail_at, set()

    def resources(self) -> Resources:
        return Resources(batch_size=7, ahead=self.ahead)

    def process(self, record: dict):
        self.threads.add(threading.current_thread().name)
        if record["n"] == self.fail_at:
            raise ValueError(f"bad record {record['n']}")
        if record["n"] % 2:
            yield Dropped(record["id"], "odd", "")
            return
        yield {**record, "copy": 0}
        yield {**record, "copy": 1}


def run(stage: Doubler, n: int) -> tuple[list[dict], StageCounter]:
    ps = PlannedStage(0, stage.name, stage.name, stage, TEXT_RECORD, TEXT_RECORD)
    counter = StageCounter(0, stage.name, "per-record")
    records = ({"id": f"r{i:04d}", "text": "x", "n": i} for i in range(n))
    return list(apply_record_stage(ps, records, counter, removed=[])), counter


@pytest.mark.parametrize("n", [0, 1, 7, 8, 100])
def test_ahead_gives_the_same_outcomes_in_the_same_order(n):
    plain, c_plain = run(Doubler(ahead=False), n)
    stage = Doubler(ahead=True)
    ahead, c_ahead = run(stage, n)
    assert ahead == plain
    assert len(ahead) == 2 * ((n + 1) // 2)
    assert (c_ahead.n_in, c_ahead.n_out, c_ahead.dropped) == (c_plain.n_in, c_plain.n_out, c_plain.dropped)
    if n:
        assert stage.threads and threading.current_thread().name not in stage.threads


def test_ahead_raises_the_stage_error():
    with pytest.raises(ValueError, match="bad record 50"):
        run(Doubler(ahead=True, fail_at=50), 100)
