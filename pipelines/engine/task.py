"""The engine's one entry point for runners: what a runner may call, and nothing else.

A runner decides *where* tasks run (this process, a pool, Beam workers, datatrove tasks); the
engine decides *what* a task is. Every runner goes through :func:`execute` with its own way of
running a worker step's tasks and of publishing, so every runner produces the same bytes:

- :func:`run_task` runs task ``i`` of a worker step (a segment's shard, a group step's partition);
- :class:`SegmentTask` is the same task split at its stages, for an engine that composes steps
  itself (datatrove's pipeline of ``PipelineStep``);
- :func:`spill_shard`, :func:`write_output_file` publish on workers;
- the plan's types (:class:`Plan`, :class:`Step`) and :class:`Progress` are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.engine import harvest, publish, worker_sync
from pipelines.engine.faults import fault_point
from pipelines.engine.layout import generation_cache_dir, shard_done, step_dir
from pipelines.engine.progress import Progress
from pipelines.engine.publish import OutputFiles, publish_local, spill_shard, write_output_file
from pipelines.engine.shapes.record import SegmentTask, shard_checkpoints
from pipelines.engine.steps import Plan, PlannedStage, Step


@dataclass
class Execution:
    stats: list[dict]  # one row per (step, stage): in, out, rejected, dropped, inputs_with_output, seconds
    removed: list[str]  # files of every rejected, dropped or truncated record, with stage, reason and detail
    files: list[str]  # the output Parquet files
    input_counts: dict[int, int] | None = None  # records read per input
    retries: dict[str, int] = field(default_factory=dict)  # tasks a cluster ran again, per step


def todo(plan: Plan, step: Step) -> list[int]:
    """The tasks of a worker step that no run has finished (their markers are missing)."""
    return [i for i in range(len(plan.shards)) if not shard_done(plan, step, i)]


def run_task(plan: Plan, step: Step, i: int, *, test_hooks: bool = True) -> dict:
    """Task ``i`` of a step that runs on the workers; returns its completion marker. ``test_hooks``:
    whether the task honours ``LONGFORGE_KILL_AT`` / ``LONGFORGE_PAUSE_AT`` (:func:`fault_point`)."""
    marker = step.adapter.run_task(plan, step, i)
    if test_hooks:
        fault_point(f"{step.kind.value}:{step.index}:{i}")
    return marker


def task_reads(plan: Plan, step: Step, i: int) -> tuple[list[Path], list[Path], list[Path]]:
    """What task ``i`` reads, for a worker that must fetch it first: markers to fetch before the
    rest can be known, then files and folders."""
    return (step.adapter.task_markers(plan, step),) + step.adapter.task_reads(plan, step, i)


def work_folder(plan: Plan, step: Step) -> Path:
    return step_dir(plan, step)


def execute(plan: Plan, run_tasks: Callable[[Plan, Step], None],
            publish_files: Callable[[Plan, OutputFiles], None] = publish_local,
            after_step: Callable[[], None] | None = None) -> Execution:
    """Every step in order: a worker step's tasks by ``run_tasks`` (the runner's way), a driver
    step here; then the output files, written by ``publish_files``; then what the markers add up to."""
    for step in plan.steps:
        if step.on_workers:
            run_tasks(plan, step)
        else:
            step.adapter.run_driver(plan, step)
            fault_point(f"{step.kind.value}:{step.index}:0")
        if after_step is not None:
            after_step()
    files = publish.output_files(plan)
    publish_files(plan, files)
    paths = publish.finish_publish(plan, files)
    return Execution(stats=harvest.collect_stats(plan), removed=[str(f) for f in harvest.removed_files(plan)],
                     files=[str(p) for p in paths], input_counts=harvest.input_counts(plan))


def run_task_synced(plan: Plan, step_index: int, i: int) -> dict:
    """Task ``i`` of a worker step: fetch what it reads, run it, push what it wrote."""
    mirror = worker_sync.mirror_of(plan.remote_output)
    local = worker_sync.local_plan(plan, mirror)
    step = local.steps[step_index]
    markers, files, folders = task_reads(local, step, i)
    if markers:  # which files hold the task's input is known from these
        mirror.fetch([worker_sync.relative(local, m) for m in markers])
        markers, files, folders = task_reads(local, step, i)
    folders = folders + [shard_checkpoints(local, step, i).folder, generation_cache_dir(local)]
    mirror.fetch([worker_sync.relative(local, f) for f in files], [worker_sync.relative(local, f) for f in folders])
    marker = run_task(local, step, i)
    mirror.push()
    return marker


# On a cluster whose workers share only the remote output: each publishing task fetches what it
# reads and pushes what it wrote; the driver fetches what it reads of theirs.
spill_shard_synced = worker_sync.spill_shard
write_output_file_synced = worker_sync.write_output_file
fetch_for_driver = worker_sync.fetch_for_driver
sync_wanted = worker_sync.wanted


__all__ = ["Execution", "OutputFiles", "Plan", "PlannedStage", "Progress", "SegmentTask", "Step", "execute",
           "fault_point", "fetch_for_driver", "publish_local", "run_task", "run_task_synced", "spill_shard",
           "spill_shard_synced", "sync_wanted", "task_reads", "todo", "work_folder", "write_output_file",
           "write_output_file_synced"]
