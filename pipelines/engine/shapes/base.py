"""What the engine asks of a shape. One adapter per shape (``record``, ``decide``, ``global_step``,
``group_step``), chosen once per stage by its ``shape`` (:func:`pipelines.engine.shapes.shape_of`);
the rest of the engine asks the adapter and never looks at a stage's class or a shape's name.

A stage of a shape other than per-record is *central* to a step of its own; the task before that
step *feeds* it (writes the keys, summaries or partitions it reads), and the segment after it may
*apply* its answer first (a gate).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from pipelines.engine.accounting import StageCounter
from pipelines.engine.layout import generation_cache_dir
from pipelines.engine.steps import Plan, PlannedStage, Step
from schemas import RecordSchema
from stages.base import Services, Stage


def services(plan: Plan) -> Services:
    """What the engine hands the stages of this plan wherever they run."""
    return Services(generation_cache=generation_cache_dir(plan), output_dir=Path(plan.output_dir))


def ensure_setup(stage: Stage, given: Services | None = None) -> None:
    if not getattr(stage, "_longforge_ready", False):
        if given is not None:
            stage.services = given
        stage.setup()
        stage._longforge_ready = True


class Shape:
    name: ClassVar[str]
    expanding_name: ClassVar[str | None] = None  # the name when the stage expands (per-record-expanding)
    fused: ClassVar[bool] = False  # its stages join the segment they stand in (no step of their own)
    expands_always: ClassVar[bool] = False  # inputs make outputs (a group's records), never one to one
    answer_writes_side_tables: ClassVar[bool] = False  # applying its answer may write side-table rows
    partitions_can_feed: ClassVar[bool] = False  # its step's tasks can write what the next step reads
    summarizes_without_sums: ClassVar[bool] = False  # its metrics are summarised even when nothing measured
    #: Its step's task may hold more than a shard (a partition of groups): the segment after it
    #: streams the task's records to its files instead of holding them.
    large_tasks: ClassVar[bool] = False
    fed_with: ClassVar[str] = ""  # what the task before its step writes for it (keys, summaries, parts)

    def label(self, stage: Stage) -> str:
        return self.expanding_name if stage.expands and self.expanding_name else self.name

    def expands(self, stage: Stage) -> bool:
        """Whether one input may make several outputs (its accounting counts inputs with output)."""
        return self.expands_always or (stage.expands and self.expanding_name is not None)

    # -- planning ----------------------------------------------------------------------------------

    def make_step(self, index: int, ps: PlannedStage) -> Step:
        raise NotImplementedError(f"a {self.name} stage is fused into a segment")

    def answer_applied(self, stage: Stage) -> bool:
        """Whether the segment after this stage's step applies its answer first."""
        return False

    def step_out_schema(self, ps: PlannedStage) -> RecordSchema:
        """The records its step leaves (a driver step: those it was given)."""
        return ps.input_schema

    def where(self, step: Step, on_workers: str) -> dict:
        raise NotImplementedError

    # -- the task before: what it writes for this stage ---------------------------------------------

    def feed(self, plan: Plan, step: Step, i: int, rows: list[dict], table) -> tuple[float, dict]:
        """Write, for task ``i`` of ``step``, what this stage's step reads; returns the seconds
        spent and what the task's marker records of it."""
        raise NotImplementedError

    def feed_format(self, ps: PlannedStage) -> str | None:
        """What marks a feeding task's files as of the form this stage reads now (None: the first
        form); a marker naming another is not a finished task."""
        return None

    def feed_streamed(self) -> bool:
        """Whether a task whose records come as a stream may feed this stage from its records file,
        a batch at a time (:meth:`feed_file`), rather than from the task's rows in memory."""
        return False

    def feed_file(self, plan: Plan, step: Step, i: int, records: Path) -> tuple[float, dict]:
        raise NotImplementedError

    def feeds_records_file(self) -> bool:
        """Whether the feeding task also writes its records file (a group step reads its parts)."""
        return True

    def fed_counter(self, ps: PlannedStage, counted_at: int, n_rows: int) -> StageCounter:
        """The feeding task's counter for this stage: its cost, counts where they are taken."""
        return StageCounter.of(counted_at, ps)

    # -- the segment after: its answer applied ------------------------------------------------------

    def apply(self, plan: Plan, gate: Step, i: int, records: list[dict], counter: StageCounter,
              removed: list[dict], sides: dict[str, list[dict]] | None) -> Iterator[dict]:
        raise NotImplementedError

    # -- running its step ---------------------------------------------------------------------------

    def run_task(self, plan: Plan, step: Step, i: int) -> dict:
        raise NotImplementedError(f"a {self.name} step runs on the driver")

    def run_driver(self, plan: Plan, step: Step) -> None:
        raise NotImplementedError(f"a {self.name} step runs on the workers")

    def task_reads(self, plan: Plan, step: Step, i: int) -> tuple[list[Path], list[Path]]:
        """The files and folders task ``i`` of its step reads (what a remote worker fetches)."""
        raise NotImplementedError

    def task_markers(self, plan: Plan, step: Step) -> list[Path]:
        """Markers a remote worker fetches before it can tell what task ``i`` reads."""
        return []

    def driver_answer(self, plan: Plan, step: Step) -> dict:
        """What a finished driver step left for the run's summary: metrics, artifacts (name -> file)."""
        return {}
