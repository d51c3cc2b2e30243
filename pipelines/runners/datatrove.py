"""The datatrove runner: each segment is a datatrove pipeline run by its LocalPipelineExecutor.

Every longforge per-record stage becomes a datatrove ``PipelineStep`` over ``Document`` objects
(generator composition, so memory stays flat), between a reader step for the shard and a writer
step that leaves the same shard files and completion markers as the local runner. One datatrove
task is one shard; datatrove's own completion files make a rerun skip finished tasks.

A group step is one datatrove task per partition (:class:`GroupTask`), which gathers its groups
from every shard. Whole-collection and global stages run as the local runner runs them (one
decision on the driver over all shards' keys or summaries).
datatrove ships MinHash and exact-substring dedup blocks, but their keep rules differ from ours
(``drop any record sharing a bucket with a smaller id``); applying our rule on every runner is what
keeps the outputs byte-identical across runners.
"""

from __future__ import annotations

import logging
import time

import datatrove.executor.base as _executor_base
from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep

from pipelines import accounting, checkpoints, engine, layout
from pipelines.plan import Plan, PlannedStage, Step, StepKind
from pipelines.runners import Execution
from pipelines.runners.local import ShardedRunner

_add_task_logger = _executor_base.add_task_logger


def _quiet_task_logger(logging_dir, rank, local_rank=0, node_rank=-1):
    """datatrove's per-task logger, with the console at ERROR (its own log files keep everything).

    Applied at import, so that datatrove's worker processes, which import this module to unpickle
    the steps, are quiet too; the progress bar and summary table are longforge's."""
    return _add_task_logger(logging_dir, rank, local_rank=max(local_rank, 1), node_rank=node_rank)


_executor_base.add_task_logger = _quiet_task_logger


_NO_TEXT = "longforge.no_text"  # a record a stage left without text (token ids only): none comes back


def to_document(record: dict) -> Document:
    meta = {k: v for k, v in record.items() if k not in ("id", "text")}
    if "text" not in record:
        meta[_NO_TEXT] = True
    return Document(text=record.get("text", ""), id=record["id"], metadata=meta)


def from_document(doc: Document) -> dict:
    meta = dict(doc.metadata)
    if meta.pop(_NO_TEXT, False):
        return {"id": doc.id, **meta}
    return {"id": doc.id, "text": doc.text, **meta}


class ShardState:
    """What the steps of one task share: per-stage counters and removed records of the shard."""

    def __init__(self):
        self.reset()

    def reset(self, checkpoints: checkpoints.BatchCheckpoints | None = None):
        self.counters: list[accounting.StageCounter] = []
        self.removed: list[dict] = []
        self.sides: dict[str, list[dict]] = {}
        self.checkpoints = checkpoints
        self.t0 = time.time()


class ShardReader(PipelineStep):
    name = "longforge shard reader"
    type = "📖 - READER"

    def __init__(self, plan: Plan, step: Step, state: ShardState):
        super().__init__()
        self.plan, self.step_index, self.state = plan, step.index, state

    def run(self, data, rank: int = 0, world_size: int = 1):
        step = self.plan.steps[self.step_index]
        for record in engine.iter_segment_input(self.plan, step, rank, self.state.counters, self.state.removed,
                                                self.state.sides):
            self.stat_update("documents")
            yield to_document(record)


class StageStep(PipelineStep):
    """A longforge per-record stage as a datatrove step."""

    type = "🔻 - FILTER"

    def __init__(self, plan: Plan, ps: PlannedStage, step: Step, state: ShardState):
        self.name = f"longforge {ps.label}"
        super().__init__()
        self.plan, self.ps, self.step_index, self.state = plan, ps, step.index, state

    def run(self, data, rank: int = 0, world_size: int = 1):
        engine.ensure_setup(self.ps.stage, engine.services(self.plan))
        counter = accounting.StageCounter(self.step_index, self.ps.label, self.ps.shape)
        self.state.counters.append(counter)
        records = (from_document(d) for d in data)
        for record in engine.apply_record_stage(self.ps, records, counter, self.state.removed,
                                                 self.state.checkpoints, self.state.sides):
            self.stat_update("kept")
            yield to_document(record)
        self.stat_update("removed", value=counter.rejected + counter.dropped)


class ShardWriter(PipelineStep):
    name = "longforge shard writer"
    type = "💽 - WRITER"

    def __init__(self, plan: Plan, step: Step, state: ShardState):
        super().__init__()
        self.plan, self.step_index, self.state = plan, step.index, state

    def run(self, data, rank: int = 0, world_size: int = 1):
        # The writer's body runs first (it pulls from the steps before it), so it starts the shard.
        step = self.plan.steps[self.step_index]
        self.state.reset(engine.shard_checkpoints(self.plan, step, rank))
        rows = [from_document(d) for d in data]
        engine.finish_segment_shard(self.plan, step, rank, rows, self.state.counters, self.state.removed,
                                    self.state.t0, self.state.checkpoints.tally(), self.state.sides)
        self.stat_update("written", value=len(rows))
        return
        yield  # a generator, as datatrove expects


class GroupTask(PipelineStep):
    """One partition of a group step as a datatrove task (the engine gathers and builds it)."""

    name = "longforge group partition"
    type = "🫂 - GROUP"

    def __init__(self, plan: Plan, step: Step):
        super().__init__()
        self.plan, self.step_index = plan, step.index

    def run(self, data, rank: int = 0, world_size: int = 1):
        marker = engine.run_group_partition(self.plan, self.plan.steps[self.step_index], rank)
        self.stat_update("written", value=marker["records"])
        return
        yield  # a generator, as datatrove expects


class DatatroveRunner(ShardedRunner):
    name = "datatrove"

    def __init__(self, workers: int = 1, progress=None):
        self.workers = workers
        self.progress = progress

    def run_tasks(self, plan: Plan, step: Step) -> None:
        if all(layout.shard_done(plan, step, i) for i in range(len(plan.shards))):
            return
        if step.kind is StepKind.GROUP:
            pipeline = [GroupTask(plan, step)]
        else:
            state = ShardState()
            pipeline = [ShardReader(plan, step, state)]
            pipeline += [StageStep(plan, ps, step, state) for ps in step.stages]
            pipeline.append(ShardWriter(plan, step, state))
        logs = layout.step_dir(plan, step) / "datatrove-logs"
        executor = LocalPipelineExecutor(pipeline=pipeline, tasks=len(plan.shards), workers=self.workers,
                                         logging_dir=str(logs), skip_completed=True)
        if self.progress is not None:
            self.progress.log(f"datatrove: {step.name}: {len(plan.shards)} tasks, {self.workers} workers")
        executor.run()
        missing = [i for i in range(len(plan.shards)) if not layout.shard_done(plan, step, i)]
        if missing:
            raise RuntimeError(f"datatrove finished {step.name} without shards {missing}; see {logs}")

    def execute(self, plan: Plan) -> Execution:
        logging.getLogger("datatrove").setLevel(logging.WARNING)
        _quiet_loguru()
        return super().execute(plan)


def _quiet_loguru() -> None:
    """datatrove logs every task through loguru at INFO; keep warnings only on the console."""
    import sys

    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
