"""The plan's types: a planned stage, the steps (one type per shape of step), the plan itself.

A step is what the engine schedules: a *segment* (per-record stages fused, shard by shard, on the
workers), a *group* step (a per-group stage, partition by partition, on the workers), or a driver
step (a whole-collection *decide*, a *global* decision). Each step holds its shape's adapter
(:mod:`pipelines.engine.shapes`): the engine asks the adapter what to run, never the step's type.
These types import nothing of the engine, so every engine module, runner and test can use them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from pipelines.spec import LoadedSpec, PipelineSpec
from pipelines.storage.readers import Shard, estimate_records
from schemas import DOCUMENT, RecordSchema
from stages.base import Stage


@dataclass
class PlannedStage:
    index: int
    name: str
    label: str
    stage: Stage
    input_schema: RecordSchema
    output_schema: RecordSchema
    adapter: Any = None  # its shape's adapter (engine.shapes.Shape), set by the planner

    @property
    def shape(self) -> str:
        """The shape's name as statistics and the catalog keep it (``per-record-expanding``, ...)."""
        return self.adapter.label(self.stage)


class StepKind(StrEnum):
    """``segment``: per-record work shard by shard (starting with the decisions or columns of the
    step before, if any); ``decide``: a whole-collection decision; ``global``: a global stage's
    decision over every record's summary, on the driver; ``group``: a per-group stage, partition by
    partition on the workers."""

    SEGMENT = "segment"
    DECIDE = "decide"
    GLOBAL = "global"
    GROUP = "group"


@dataclass
class Step:
    """What every step has. ``adapter`` runs it (a task on the workers, or the driver's decision)."""

    index: int
    adapter: Any = None
    fingerprint: str = ""
    out_schema: RecordSchema = DOCUMENT
    kind: ClassVar[StepKind]
    on_workers: ClassVar[bool]  # tasks on the workers (one per shard or partition), or one driver step
    composable: ClassVar[bool] = False  # its task is a chain of per-record stages another engine may compose

    @property
    def name(self) -> str:
        raise NotImplementedError

    def labels(self) -> list[str]:
        """The stages this step runs, in order, as a job graph names them."""
        raise NotImplementedError

    def identity(self) -> dict:
        """What, besides the steps before, determines this step's output (its fingerprint's part)."""
        raise NotImplementedError

    def side_table_stages(self) -> list[PlannedStage]:
        """The stages whose side tables this step's tasks write."""
        return []

    def records_schema(self, before: Step | None) -> RecordSchema:
        """The schema of the records this step leaves (``before``: the step before it)."""
        raise NotImplementedError


def _stage_identity(ps: PlannedStage) -> tuple:
    return ps.name, ps.label, ps.stage.params.model_dump()


@dataclass
class SegmentStep(Step):
    """Per-record stages shard by shard; first the answer of the driver step before (``gate``), last
    what the next step's stage reads (``feeds``: keys, summaries or group parts)."""

    stages: list[PlannedStage] = field(default_factory=list)
    gate: PlannedStage | None = None
    gate_step: Step | None = field(default=None, repr=False, compare=False)  # the driver step answering the gate
    feeds: PlannedStage | None = None
    feeds_counted_at: int = -1  # the step whose statistics count the fed stage
    kind: ClassVar[StepKind] = StepKind.SEGMENT
    on_workers: ClassVar[bool] = True
    composable: ClassVar[bool] = True

    @property
    def name(self) -> str:
        names = ([f"apply-{self.gate.label}"] if self.gate else []) + [s.label for s in self.stages]
        if not names and self.feeds is not None:  # only hands the records on to the next step's stage
            names = [f"feed-{self.feeds.label}"]
        return f"step-{self.index:02d}-" + ("-".join(names) or "read")

    def labels(self) -> list[str]:
        return (([f"apply {self.gate.label}"] if self.gate is not None else []) + [ps.label for ps in self.stages]
                + ([f"feed {self.feeds.label}"] if self.feeds is not None else []))

    def identity(self) -> dict:
        return {"kind": self.kind, "gate": self.gate.label if self.gate else None,
                "feeds": self.feeds.label if self.feeds else None,
                "stages": [_stage_identity(s) for s in self.stages]}

    def side_table_stages(self) -> list[PlannedStage]:
        gate = [self.gate] if self.gate is not None and self.gate.adapter.answer_writes_side_tables else []
        return self.stages + gate

    def records_schema(self, before: Step | None) -> RecordSchema:
        if self.stages:
            return self.stages[-1].output_schema
        if self.gate:
            return self.gate.output_schema
        return before.out_schema if before is not None else DOCUMENT


@dataclass
class CentralStep(Step):
    """A step built around one stage (``central``): a driver decision or a group step."""

    central: PlannedStage | None = None

    @property
    def name(self) -> str:
        return f"step-{self.index:02d}-{self.kind.value}-{self.central.label}"

    def labels(self) -> list[str]:
        return [self.central.label]

    def identity(self) -> dict:
        return {"kind": self.kind, "gate": None, "feeds": None, "stages": [_stage_identity(self.central)]}

    def records_schema(self, before: Step | None) -> RecordSchema:
        return self.central.adapter.step_out_schema(self.central)


@dataclass
class DecideStep(CentralStep):
    kind: ClassVar[StepKind] = StepKind.DECIDE
    on_workers: ClassVar[bool] = False


@dataclass
class GlobalStep(CentralStep):
    kind: ClassVar[StepKind] = StepKind.GLOBAL
    on_workers: ClassVar[bool] = False


@dataclass
class GroupStep(CentralStep):
    """A per-group stage, partition by partition; its partitions may also write what the next
    step's stage reads (``feeds``), so no pass only feeds it."""

    feeds: PlannedStage | None = None
    feeds_counted_at: int = -1
    kind: ClassVar[StepKind] = StepKind.GROUP
    on_workers: ClassVar[bool] = True

    def labels(self) -> list[str]:
        return [self.central.label] + ([f"feed {self.feeds.label}"] if self.feeds is not None else [])

    def identity(self) -> dict:
        return {**super().identity(), "feeds": self.feeds.label if self.feeds else None}

    def side_table_stages(self) -> list[PlannedStage]:
        return [self.central]


def fingerprint_of(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Plan:
    loaded: LoadedSpec
    spec: PipelineSpec
    stages: list[PlannedStage]
    steps: list[Step]
    shards: list[Shard]
    fingerprint: str
    output_dir: str
    notes: list[str] = field(default_factory=list)  # what planning left out or merged, said to the user
    run_id: str = ""  # the run executing the plan: markers say which run did each piece of work
    remote_output: str = ""  # the remote folder (s3://...) that output_dir stages, when there is one

    @property
    def final_schema(self) -> RecordSchema:
        return self.stages[-1].output_schema if self.stages else DOCUMENT

    @property
    def record_steps(self) -> list[Step]:
        """Steps that leave records shard by shard (segments, and groups by partition): each has
        ``len(shards)`` parts, and the last one is what is published."""
        return [s for s in self.steps if s.on_workers]

    @property
    def file_labeller(self) -> PlannedStage | None:
        """The stage whose ``file_label_field`` names the output files, while the records keep its
        record type to the end (decomposition's buckets: ``data/train-D08-*``); None: one set."""
        labeller = None
        for ps in self.stages:
            if ps.stage.file_label_field is not None:
                labeller = ps
            elif labeller is not None and ps.output_schema.name != ps.input_schema.name:
                labeller = None
        if labeller is not None and labeller.stage.file_label_field not in self.final_schema.field_map():
            return None
        return labeller

    def describe(self) -> dict:
        return {
            "pipeline": self.spec.name,
            "file": self.loaded.file,
            "spec_fingerprint": self.fingerprint,
            "inputs": [i.model_dump() for i in self.spec.inputs],
            "shards": [s.label() for s in self.shards],
            "estimated_records": sum(estimate_records(s) for s in self.shards),
            "output": self.output_dir,
            "stages": [
                {"stage": s.name, "label": s.label, "shape": s.shape, "params": s.stage.params.model_dump(),
                 "reads": s.input_schema.ref, "writes": s.output_schema.ref,
                 "fields": [f.name for f in s.output_schema.fields]}
                for s in self.stages
            ],
            "steps": [s.name for s in self.steps],
            "notes": self.notes,
        }

    def where(self, runner: str, workers: int) -> list[dict]:
        """Each step's shape, where it runs and what the driver holds while it runs: what a user
        needs to know before pointing the pipeline at a corpus larger than the driver's memory."""
        on_workers = {"local": f"the driver's process{'' if workers <= 1 else f' and {workers} pool processes'}",
                      "beam": f"Beam workers ({workers} process{'es' if workers > 1 else ''} locally, or the "
                              "cluster named by --beam-arg=--runner=...)",
                      "datatrove": f"datatrove tasks ({workers} worker{'s' if workers > 1 else ''})",
                      "ray": "Ray tasks (the cluster of --ray-address, or one started for the run with "
                             f"{workers} CPU{'s' if workers > 1 else ''})"}[runner]
        rows = [step.adapter.where(step, on_workers) for step in self.steps]
        publish_on = (on_workers if runner == "beam" else
                      "Ray tasks with a remote output, else the driver's process" if runner == "ray"
                      else "the driver's process")
        rows.append({"step": "publish", "shape": "per-output-file", "runs_on": publish_on,
                     "driver_holds": ["one output file's records" if runner != "beam" else "row-group indexes"]})
        return rows
