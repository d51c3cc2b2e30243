"""From a validated pipeline file to an executable plan: stages, schemas, steps, shards, fingerprints.

Consecutive per-record stages are fused into one *segment* that runs shard by shard. A
whole-collection stage splits the plan: the segment before it also emits the stage's grouping keys,
a *decide* step turns the keys into drop decisions, and the next segment starts by applying them.
Each step has a fingerprint of everything that determines its output, which keys its completion
markers: a rerun redoes only the steps, and the shards, whose fingerprint has no marker.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from enum import StrEnum

from pipelines import storage
from pipelines.io import InputError, Shard, estimate_records, plan_shards
from pipelines.spec import InputSpec, LoadedSpec, PipelineSpec, did_you_mean
from schemas import DOCUMENT, RecordSchema
from stages import all_stages
from stages.base import CollectionStage, GlobalStage, GroupStage, RecordStage, Stage

CODE_VERSION = "0.1.0"


@dataclass
class PlannedStage:
    index: int
    name: str
    label: str
    stage: Stage
    input_schema: RecordSchema
    output_schema: RecordSchema

    @property
    def shape(self) -> str:
        if isinstance(self.stage, RecordStage):
            return "per-record-expanding" if self.stage.expands else "per-record"
        if isinstance(self.stage, GlobalStage):
            return "global-expanding" if self.stage.expands else "global"
        if isinstance(self.stage, GroupStage):
            return "per-group"
        return "whole-collection"


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
    index: int
    kind: StepKind
    stages: list[PlannedStage] = field(default_factory=list)
    gate: PlannedStage | None = None  # segment: apply this collection or global stage's answer first
    feeds: PlannedStage | None = None  # segment: also write what the next step's stage reads (keys, summaries, parts)
    central: PlannedStage | None = None  # decide, global or group step: its stage
    fingerprint: str = ""
    out_schema: RecordSchema = DOCUMENT

    @property
    def name(self) -> str:
        if self.kind in (StepKind.DECIDE, StepKind.GLOBAL, StepKind.GROUP):
            return f"step-{self.index:02d}-{self.kind.value}-{self.central.label}"
        names = ([f"apply-{self.gate.label}"] if self.gate else []) + [s.label for s in self.stages]
        if not names and self.feeds is not None:  # only hands the records on to the next step's stage
            names = [f"feed-{self.feeds.label}"]
        return f"step-{self.index:02d}-" + ("-".join(names) or "read")


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
    def segments(self) -> list[Step]:
        return [s for s in self.steps if s.kind is StepKind.SEGMENT]

    @property
    def record_steps(self) -> list[Step]:
        """Steps that leave records shard by shard (segments, and groups by partition): each has
        ``len(shards)`` parts, and the last one is what is published."""
        return [s for s in self.steps if s.kind in (StepKind.SEGMENT, StepKind.GROUP)]

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
                      "datatrove": f"datatrove tasks ({workers} worker{'s' if workers > 1 else ''})"}[runner]
        rows = []
        for step in self.steps:
            if step.kind is StepKind.SEGMENT:
                shape = "per-record" if not step.gate else f"{step.gate.shape} answer applied + per-record"
                rows.append({"step": step.name, "shape": shape, "runs_on": on_workers,
                             "driver_holds": ["completion markers (counts per shard)"]})
            elif step.kind is StepKind.GROUP:
                rows.append({"step": step.name, "shape": "per-group", "runs_on": on_workers + ", one partition "
                             "of the groups per task", "driver_holds": ["completion markers (counts per partition)"]})
            elif step.kind is StepKind.GLOBAL:
                ps = step.central
                fields = [f.name for f in ps.stage.summary_fields(ps.input_schema)]
                rows.append({"step": step.name, "shape": "global", "runs_on": "the driver, one decision over "
                             "every record's summary; its columns are joined onto the records on the workers",
                             "driver_holds": ["id, " + (", ".join(fields) or "(nothing else)") + " of every record"]})
            else:  # StepKind.DECIDE
                rows.append({"step": step.name, "shape": "whole-collection (keys -> decide)",
                             "runs_on": "the driver, out of core (DuckDB sorts the shards' key files, spilling "
                                        "to disk, within LONGFORGE_DUCKDB_MEMORY)",
                             "driver_holds": ["one batch of sorted keys and the key group being decided: key, "
                                              "value, id, digest, shard, row"]})
        publish_on = on_workers if runner == "beam" else "the driver's process"
        rows.append({"step": "publish", "shape": "per-output-file", "runs_on": publish_on,
                     "driver_holds": ["one output file's records" if runner != "beam" else "row-group indexes"]})
        return rows


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _producer_hint(missing_fields: list[str]) -> str:
    """Name a stage that would produce the missing fields, for the error's fix."""
    for name, cls in all_stages().items():
        try:
            out = cls().output_schema(DOCUMENT)
        except Exception:  # noqa: BLE001 - a hint is best effort
            continue
        have = out.field_map()
        if all(f in have for f in missing_fields) and not all(f in DOCUMENT.field_map() for f in missing_fields):
            return f"add a '{name}' stage before it"
    return "reorder the stages so that one producing these fields comes first"


def resolve_stages(loaded: LoadedSpec) -> list[PlannedStage]:
    """Instantiate every stage and check that each one's input schema is met by what reaches it."""
    registry = all_stages()
    spec = loaded.spec
    current = DOCUMENT
    planned: list[PlannedStage] = []
    labels: set[str] = set()
    for i, st in enumerate(spec.stages):
        cls = registry[st.stage]
        params = cls.Params.model_validate(st.params)
        stage = cls(params, seed=spec.seed)
        problems = stage.input_schema.missing_from(current)  # an instance may need fields its params name
        if problems:
            previous = f"stage '{planned[-1].name}'" if planned else "the reader"
            missing = [p.split("'")[1] for p in problems]
            raise loaded.error(
                ("stages", i, "stage"),
                f"stage '{st.stage}' cannot read what {previous} writes ({current.ref}): "
                + "; ".join(problems),
                _producer_hint(missing),
            )
        label = st.label or st.stage
        if label in labels:
            raise loaded.error(("stages", i, "label"), f"label '{label}' is used twice",
                               "give the repeated stage a distinct 'label:'")
        labels.add(label)
        out = stage.output_schema(current)
        stage.see_upstream([(ps.label, ps.stage) for ps in planned])
        planned.append(PlannedStage(i, st.stage, label, stage, current, out))
        current = out
    return planned


def build_steps(stages: list[PlannedStage], base_identity: dict) -> list[Step]:
    steps: list[Step] = []
    segment = Step(0, StepKind.SEGMENT)
    for ps in stages:
        if isinstance(ps.stage, RecordStage):
            segment.stages.append(ps)
        else:  # collection, global, group: the segment before writes what its step reads
            kind = (StepKind.DECIDE if isinstance(ps.stage, CollectionStage) else
                    StepKind.GLOBAL if isinstance(ps.stage, GlobalStage) else StepKind.GROUP)
            if not segment.stages and segment.gate is None and steps and steps[-1].kind is StepKind.GROUP:
                steps[-1].feeds = ps  # a group step's partitions write it: no pass that only feeds
            else:
                segment.feeds = ps
                steps.append(segment)
            steps.append(Step(len(steps), kind, central=ps))
            # After a decision or global columns, the next segment applies them; after a group
            # step, its partitions are the records; after a global stage that only observes, the
            # records are those it saw.
            applies = kind is not StepKind.GROUP and not getattr(ps.stage, "observes", False)
            segment = Step(len(steps), StepKind.SEGMENT, gate=ps if applies else None)
    if segment.stages or segment.gate or not any(s.kind in (StepKind.SEGMENT, StepKind.GROUP) for s in steps):
        steps.append(segment)
    # Chain fingerprints: a step's output depends on the inputs and every stage up to it.
    upstream = _hash(base_identity)
    for step in steps:
        own = {
            "kind": step.kind,
            "gate": step.gate.label if step.gate else None,
            "feeds": step.feeds.label if step.feeds else None,
            "stages": [(s.name, s.label, s.stage.params.model_dump()) for s in step.stages]
            + ([(step.central.name, step.central.label, step.central.stage.params.model_dump())]
               if step.central else []),
        }
        step.fingerprint = _hash({"upstream": upstream, "own": own})
        upstream = step.fingerprint
        if step.kind is StepKind.SEGMENT:
            if step.stages:
                step.out_schema = step.stages[-1].output_schema
            elif step.gate:
                step.out_schema = step.gate.output_schema
            elif step.index > 0:
                step.out_schema = steps[step.index - 1].out_schema
        elif step.kind is StepKind.GROUP:
            step.out_schema = step.central.output_schema
        else:
            step.out_schema = step.central.input_schema
    return steps


def input_identity(inputs: list[InputSpec], shards: list[Shard]) -> list:
    files = sorted({p for s in shards for p in s.paths})
    ident = []
    for p in files:
        if storage.is_remote(p):
            ident.append((p, *storage.identity(p)))
            continue
        st = os.stat(p)
        ident.append((os.path.abspath(p), st.st_size, st.st_mtime_ns))
    return [[i.model_dump() for i in inputs], ident, [s.to_json() for s in shards]]


def build_plan(loaded: LoadedSpec, *, inputs: list[str] | None = None, output: str | None = None,
               seed: int | None = None) -> Plan:
    """Apply command-line overrides, resolve stages and schemas, plan shards and fingerprints."""
    spec = loaded.spec
    updates: dict = {}
    from pipelines.spec import PipelineError

    try:  # file:// URLs are local paths, as in the pipeline file (spec.py's validators)
        inputs = [storage.local_path(p) for p in inputs] if inputs else inputs
        output = storage.local_path(output) if output else output
    except ValueError as e:
        raise PipelineError(loaded.file, None, "--input/--output", str(e), "give a local path or file:///abs/path") \
            from None
    if inputs:
        first = spec.inputs[0] if spec.inputs else InputSpec(path=inputs[0])
        new_inputs = [first.model_copy(update={"path": inputs[0]})]
        new_inputs += [InputSpec(path=p) for p in inputs[1:]]
        updates["inputs"] = new_inputs + list(spec.inputs[1:])
    if seed is not None:
        updates["seed"] = seed
    if updates:
        spec = spec.model_copy(update=updates)
        loaded = LoadedSpec(spec, loaded.file, loaded.lines)
    if not spec.inputs:
        raise loaded.error(("inputs",), "the pipeline has no inputs", "pass --input PATH or add 'inputs:'")
    stages = resolve_stages(loaded)
    notes: list[str] = []
    try:
        shards = plan_shards(spec.inputs, spec.read, notes)
    except FileNotFoundError as e:
        if inputs:
            raise PipelineError(loaded.file, None, "--input", str(e), "check the path") from None
        raise loaded.error(("inputs",), str(e), "check the path, or pass --input PATH") from None
    except InputError as e:
        if inputs and e.index < len(inputs):
            raise PipelineError(loaded.file, None, f"--input {inputs[e.index]}", str(e), e.fix) from None
        raise loaded.error(("inputs", e.index, "path"), str(e), e.fix) from None
    except Exception as e:  # noqa: BLE001 - a remote store unreachable, refusing, or without credentials
        remote = [i.path for i in spec.inputs if storage.is_remote(i.path)]
        if not remote:
            raise
        from pipelines.redaction import redact_text

        raise PipelineError(loaded.file, None, "--input" if inputs else "inputs",
                            redact_text(f"cannot list the remote input(s) {', '.join(remote)}: {type(e).__name__}: "
                                        f"{' '.join(str(e).split())[:300]}"),
                            "check the URL, the network and the store's credentials") from None
    base = {
        "code": CODE_VERSION,
        "seed": spec.seed,
        "read": spec.read.model_dump(),
        "inputs": input_identity(spec.inputs, shards),
    }
    steps = build_steps(stages, base)
    fingerprint = _hash({"steps": [s.fingerprint for s in steps], "output": spec.output.records_per_file})
    out = output or spec.output.path or os.path.join("out", spec.name)
    problem = output_overlaps_input(out, spec.inputs, shards)
    if problem:
        key = "--output" if output else "output.path"
        if output:
            raise PipelineError(loaded.file, None, key, problem, "write the output to a folder of its own")
        raise loaded.error(("output", "path"), problem, "write the output to a folder of its own")
    return Plan(loaded, spec, stages, steps, shards, fingerprint, out, notes)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _remote_overlap(output: str, inputs: list[InputSpec]) -> str | None:
    """The same rule for URLs (s3://bucket/a/b), each resolved by fsspec to its filesystem and path
    (s3a:// and s3://, gcs:// and gs://, a caching chain's target are one place), '/' separating
    folders."""
    def norm(url: str) -> tuple[str, str]:
        try:
            fs, path = storage.filesystem(url)
        except Exception:  # noqa: BLE001 - an unknown protocol: compare the text
            return url.split("://", 1)[0], url.split("://", 1)[-1].rstrip("/")
        fs = getattr(fs, "fs", fs)  # the store behind simplecache:: and friends
        return type(fs).__name__, path.rstrip("/")

    def inside(a: tuple[str, str], b: tuple[str, str]) -> bool:
        return a[0] == b[0] and (a[1] == b[1] or a[1].startswith(b[1] + "/"))

    out = norm(output)
    for k, inp in enumerate(inputs):
        if not storage.is_remote(inp.path):
            continue
        parts = []
        for part in inp.path.split("/"):
            if any(ch in part for ch in "*?["):
                break
            parts.append(part)
        root = norm("/".join(parts))
        if inside(out, root):
            return (f"output '{output}' is inside input {k} ('{inp.path}'): the run would write into its input, "
                    "and the next run would read its own output back")
        if inside(root, out):
            return f"input {k} ('{inp.path}') is inside output '{output}': the run would overwrite what it reads"
    return None


def _input_root(inp: InputSpec) -> str:
    """The folder an input names: itself, or a glob's fixed leading part."""
    path = os.path.expanduser(inp.path)
    if any(ch in path for ch in "*?["):
        fixed = []
        for part in path.split(os.sep):
            if any(ch in part for ch in "*?["):
                break
            fixed.append(part)
        path = os.sep.join(fixed) or "."
    return os.path.realpath(path)


def output_overlaps_input(output: str, inputs: list[InputSpec], shards: list[Shard]) -> str | None:
    """Why writing to ``output`` would overwrite an input or be read back as one, or None."""
    if storage.is_remote(output):  # a remote output can only overlap remote inputs
        return _remote_overlap(output, inputs)
    out = os.path.realpath(output)
    for k, inp in enumerate(inputs):
        if storage.is_remote(inp.path):
            continue
        root = _input_root(inp)
        if os.path.isdir(root) and _inside(out, root):
            return (f"output '{output}' is inside input {k} ('{inp.path}'): the run would write into its input, "
                    "and the next run would read its own output back")
        if _inside(root, out):
            return f"input {k} ('{inp.path}') is inside output '{output}': the run would overwrite what it reads"
    for s in shards:
        for p in s.paths:
            if not storage.is_remote(p) and _inside(os.path.realpath(p), out):
                return f"input file '{p}' is inside output '{output}': the run would overwrite what it reads"
    return None


__all__ = ["Plan", "PlannedStage", "Step", "StepKind", "build_plan", "did_you_mean", "resolve_stages"]
