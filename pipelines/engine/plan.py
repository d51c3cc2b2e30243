"""From a validated pipeline file to an executable plan: stages, schemas, steps, shards, fingerprints.

Consecutive per-record stages are fused into one *segment* that runs shard by shard. A
whole-collection stage splits the plan: the segment before it also emits the stage's grouping keys,
a *decide* step turns the keys into drop decisions, and the next segment starts by applying them.
Each step has a fingerprint of everything that determines its output, which keys its completion
markers: a rerun redoes only the steps, and the shards, whose fingerprint has no marker.
"""

from __future__ import annotations

import os

from pipelines import storage
from pipelines.engine.shapes import RECORD, shape_of
from pipelines.engine.steps import Plan, PlannedStage, SegmentStep, Step, StepKind, fingerprint_of
from pipelines.spec import InputSpec, LoadedSpec, did_you_mean
from pipelines.storage.readers import InputError, Shard, plan_shards
from schemas import DOCUMENT
from stages import all_stages

CODE_VERSION = "0.1.0"


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
        planned.append(PlannedStage(i, st.stage, label, stage, current, out, shape_of(stage)))
        current = out
    return planned


def build_steps(stages: list[PlannedStage], base_identity: dict) -> list[Step]:
    """Per-record stages fuse into segments; every other stage's adapter makes the step it is
    central to, and the task before it writes what that step reads."""
    steps: list[Step] = []
    segment = SegmentStep(0, adapter=RECORD)
    fed: list[Step] = []  # steps that feed a stage whose counting step is not yet made
    for ps in stages:
        if ps.adapter.fused:
            segment.stages.append(ps)
            continue
        if not segment.stages and segment.gate is None and steps and steps[-1].adapter.partitions_can_feed:
            steps[-1].feeds = ps  # a group step's partitions write it: no pass that only feeds
            fed.append(steps[-1])
        else:
            segment.feeds = ps
            steps.append(segment)
            fed.append(segment)
        central = ps.adapter.make_step(len(steps), ps)
        steps.append(central)
        # After a decision or global columns, the next segment applies them; after a group step,
        # its partitions are the records; after a global stage that only observes, the records are
        # those it saw.
        applies = ps.adapter.answer_applied(ps.stage)
        segment = SegmentStep(len(steps), adapter=RECORD, gate=ps if applies else None,
                              gate_step=central if applies else None)
        for step in fed:  # the fed stage is counted where its answer is applied, or at its own step
            step.feeds_counted_at = segment.index if applies else central.index
        fed = []
    if segment.stages or segment.gate or not any(s.on_workers for s in steps):
        steps.append(segment)
    # Chain fingerprints: a step's output depends on the inputs and every stage up to it.
    upstream = fingerprint_of(base_identity)
    before = None
    for step in steps:
        step.fingerprint = fingerprint_of({"upstream": upstream, "own": step.identity()})
        upstream = step.fingerprint
        step.out_schema = step.records_schema(before)
        before = step
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
        from pipelines.storage.redaction import redact_text

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
    fingerprint = fingerprint_of({"steps": [s.fingerprint for s in steps], "output": spec.output.records_per_file})
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
