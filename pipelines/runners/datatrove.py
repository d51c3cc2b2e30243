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

import datatrove.executor.base as _executor_base
from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep

from pipelines.engine import task
from pipelines.engine.task import Execution, Plan, PlannedStage, SegmentTask, Step
from pipelines.runners.base import ShardedRunner

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
    """What the steps of one datatrove task share: the engine's task for its shard (rank), made by
    whichever step asks first, so no step depends on datatrove's order of running them."""

    def __init__(self, plan: Plan, step: Step):
        self.plan, self.step_index = plan, step.index
        self.tasks: dict[int, SegmentTask] = {}

    def task(self, rank: int) -> SegmentTask:
        if rank not in self.tasks:
            self.tasks[rank] = SegmentTask(self.plan, self.plan.steps[self.step_index], rank)
        return self.tasks[rank]

    def done(self, rank: int) -> None:
        self.tasks.pop(rank, None)


class ShardReader(PipelineStep):
    name = "longforge shard reader"
    type = "📖 - READER"

    def __init__(self, plan: Plan, step: Step, state: ShardState):
        super().__init__()
        self.plan, self.step_index, self.state = plan, step.index, state

    def run(self, data, rank: int = 0, world_size: int = 1):
        for record in self.state.task(rank).records():
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
        records, counter = self.state.task(rank).through(self.ps, (from_document(d) for d in data))
        for record in records:
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
        rows = [from_document(d) for d in data]
        self.state.task(rank).finish(rows)
        self.state.done(rank)
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
        # datatrove's tasks run without the kill/pause test hooks (its pool would wait on a killed worker)
        marker = task.run_task(self.plan, self.plan.steps[self.step_index], rank, test_hooks=False)
        self.stat_update("written", value=marker["records"])
        return
        yield  # a generator, as datatrove expects


class DatatroveRunner(ShardedRunner):
    name = "datatrove"

    def __init__(self, workers: int = 1, progress=None):
        self.workers = workers
        self.progress = progress

    def run_tasks(self, plan: Plan, step: Step) -> None:
        if not task.todo(plan, step):
            return
        if not step.composable:  # a group step: the engine runs the whole task
            pipeline = [GroupTask(plan, step)]
        else:
            state = ShardState(plan, step)
            pipeline = [ShardReader(plan, step, state)]
            pipeline += [StageStep(plan, ps, step, state) for ps in step.stages]
            pipeline.append(ShardWriter(plan, step, state))
        logs = task.work_folder(plan, step) / "datatrove-logs"
        executor = LocalPipelineExecutor(pipeline=pipeline, tasks=len(plan.shards), workers=self.workers,
                                         logging_dir=str(logs), skip_completed=True)
        if self.progress is not None:
            self.progress.log(f"datatrove: {step.name}: {len(plan.shards)} tasks, {self.workers} workers")
        executor.run()
        missing = task.todo(plan, step)
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
