"""The Beam runner: the same plan as composite PTransforms, on any Beam runner.

Defaults to Beam's in-process FnApiRunner (``--workers 1``) or its multi-processing mode
(``--workers N``), asked for explicitly so that Beam never tries to download the Prism runner.
Pass ``--beam-arg=--runner=DataflowRunner`` (plus its options) to run on a cluster instead.

Per-record stages are DoFns with a dead-letter output; a whole-collection stage is a composite of
FlatMap (keys) -> GroupByKey -> FlatMap (decide) -> CombinePerKey (one decision per record) ->
CoGroupByKey with the records, so nothing is collected on the driver. The output is bucketed by
``hash(id)`` with GroupByKey and each bucket written sorted, which gives the same files, byte for
byte, as the local runner.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

from pipelines import engine
from pipelines.io import read_shard
from pipelines.plan import Plan, PlannedStage
from pipelines.redaction import install_log_redaction, remember_secrets
from pipelines.runners import Execution
from stages.base import CollectionStage, Dropped, Rejected, merge_decisions
from stages.beam_pipeline import new_pipeline

NAMESPACE = "longforge"
REMOVED = "removed"
COPIES = "copies"


def _counter(step: int, stage: str, what: str):
    return Metrics.counter(NAMESPACE, f"{step}|{stage}|{what}")


class ReadShard(beam.DoFn):
    def __init__(self, plan: Plan):
        self.shards = plan.shards
        self.inputs = plan.spec.inputs
        self.read = plan.spec.read

    def setup(self):
        self.c = {w: _counter(0, "read", w) for w in ("in", "out", "rejected")}
        self.per_input = {k: Metrics.counter(NAMESPACE, f"input|{k}") for k in range(len(self.inputs))}

    def process(self, index: int):
        shard = self.shards[index]
        for item in read_shard(shard, self.inputs, self.read):
            self.c["in"].inc()
            self.per_input[shard.input_index].inc()
            if isinstance(item, Rejected):
                self.c["rejected"].inc()
                yield beam.pvalue.TaggedOutput(REMOVED, engine.removed_row("read", item))
            else:
                self.c["out"].inc()
                yield item


class ApplyRecordStage(beam.DoFn):
    """A per-record stage as a DoFn; what it removes goes to the ``removed`` output."""

    def __init__(self, ps: PlannedStage, step: int):
        self.stage, self.label, self.step = ps.stage, ps.label, step

    def setup(self):
        self.stage.setup()
        self.c = {w: _counter(self.step, self.label, w)
                  for w in ("in", "out", "rejected", "dropped", "inputs_with_output", "micros")}

    def process(self, record: dict):
        self.c["in"].inc()
        t0 = time.perf_counter()
        outcomes = list(self.stage.process(record))
        self.c["micros"].inc(int((time.perf_counter() - t0) * 1e6))
        produced = False
        for o in outcomes:
            if isinstance(o, dict):
                self.c["out"].inc()
                produced = True
                yield o
            else:
                if isinstance(o, Rejected):
                    self.c["rejected"].inc()
                    if o.payload is None:
                        o = Rejected(o.record_id, o.reason, o.detail, engine.record_json(record))
                else:
                    self.c["dropped"].inc()
                yield beam.pvalue.TaggedOutput(REMOVED, engine.removed_row(self.label, o))
        if produced:
            self.c["inputs_with_output"].inc()


class _Keys(beam.DoFn):
    def __init__(self, stage: CollectionStage):
        self.stage = stage

    def setup(self):
        self.stage.setup()

    def process(self, record: dict):
        digest = None
        for key, value in self.stage.keys(record):
            digest = digest or engine.record_digest(record).hex()
            # The same JSON round trip as the local runner, so decide() sees identical values.
            yield key, (engine._tuplify(json.loads(json.dumps(value))), digest)


class _Decide(beam.DoFn):
    def __init__(self, stage: CollectionStage):
        self.stage = stage

    def setup(self):
        self.stage.setup()

    def process(self, group):
        key, entries = group
        entries = list(entries)
        values, drops = engine.copy_drops(entries)
        for d in self.stage.decide(key, values):
            yield d.record_id, (d.reason, d.detail)
        if drops:  # copies of one record in this group: the digests of that id's copies here
            by_id: dict[str, list[str]] = {}
            for value, digest in entries:
                by_id.setdefault(engine.value_id(value), []).append(digest)
            for value, _ in drops:
                rid = engine.value_id(value)
                if rid in by_id:
                    yield beam.pvalue.TaggedOutput(COPIES, (rid, tuple(sorted(by_id.pop(rid)))))


def _one_decision(decisions):
    merged = merge_decisions(Dropped("", r, d) for r, d in decisions)
    d = merged[""]
    return d.reason, d.detail


class _ApplyDecisions(beam.DoFn):
    def __init__(self, label: str, step: int):
        self.label, self.step = label, step

    def setup(self):
        self.c = {w: _counter(self.step, self.label, w) for w in ("in", "out", "dropped", "inputs_with_output")}

    def process(self, joined):
        record_id, grouped = joined
        decision = grouped["decision"][0] if grouped["decision"] else None
        copy_sets = list(grouped["copies"])
        # As the local runner's copy_drops(): in each group of copies the smallest digest stays, and
        # of copies with equal digests (the same bytes) exactly one.
        beaten = {d for st in copy_sets for d in st if d != min(st)}
        in_sets = {d for st in copy_sets for d in st}
        kept: set[str] = set()
        for record in grouped["records"]:
            self.c["in"].inc()
            copy = None
            if decision is None and in_sets:
                digest = engine.record_digest(record).hex()
                if digest in beaten or digest in kept:
                    copy = (engine.COPY_REASON, f"another copy with the same id and {self.label} key is kept")
                elif digest in in_sets:
                    kept.add(digest)
            if copy is not None:
                self.c["dropped"].inc()
                yield beam.pvalue.TaggedOutput(REMOVED, {
                    "stage": self.label, "record_id": record_id, "reason": copy[0], "detail": copy[1],
                    "kind": "dropped", "payload": None})
            elif decision is None:
                self.c["out"].inc()
                self.c["inputs_with_output"].inc()
                yield record
            else:
                self.c["dropped"].inc()
                yield beam.pvalue.TaggedOutput(REMOVED, {
                    "stage": self.label, "record_id": record_id, "reason": decision[0], "detail": decision[1],
                    "kind": "dropped", "payload": None})


class ApplyCollectionStage(beam.PTransform):
    """keys -> GroupByKey -> decide -> one decision per id -> join with the records -> filter."""

    def __init__(self, ps: PlannedStage, step: int):
        super().__init__(label=ps.label)
        self.ps, self.step = ps, step

    def expand(self, records):
        stage = self.ps.stage
        decided, copies = (
            records
            | "Keys" >> beam.ParDo(_Keys(stage))
            | "GroupByKey" >> beam.GroupByKey()
            | "Decide" >> beam.ParDo(_Decide(stage)).with_outputs(COPIES, main="decisions")
        )
        decisions = decided | "OneDecisionPerRecord" >> beam.CombinePerKey(_one_decision)
        by_id = records | "ById" >> beam.Map(lambda r: (r["id"], r))
        return (
            {"records": by_id, "decision": decisions, "copies": copies}
            | "Join" >> beam.CoGroupByKey()
            | "Apply" >> beam.ParDo(_ApplyDecisions(self.ps.label, self.step)).with_outputs(REMOVED, main="records")
        )


class _WriteBucket(beam.DoFn):
    def __init__(self, output_dir: str, schema):
        self.output_dir, self.schema = output_dir, schema

    def process(self, group, n_files: int):
        j, rows = group
        rows = [r for r in rows if r is not None]
        path = engine.output_file(self.output_dir, j, n_files)
        engine.write_bucket(rows, path, self.schema)
        yield str(path)


class WriteBuckets(beam.PTransform):
    """Records bucketed by hash(id) into ``ceil(n / records_per_file)`` files, each sorted by id."""

    def __init__(self, output_dir: str, records_per_file: int, schema):
        super().__init__()
        self.output_dir, self.records_per_file, self.schema = output_dir, records_per_file, schema

    def expand(self, records):
        rpf = self.records_per_file
        n_files = (
            records | "Count" >> beam.combiners.Count.Globally()
            | "Files" >> beam.Map(lambda n: engine.n_output_files(n, rpf))
        )
        side = beam.pvalue.AsSingleton(n_files)
        keyed = records | "Bucket" >> beam.Map(lambda r, n: (engine.bucket_of(r["id"], n), r), side)
        every = n_files | "EveryBucket" >> beam.FlatMap(lambda n: [(j, None) for j in range(n)])
        return (
            (keyed, every) | beam.Flatten()
            | "GroupBuckets" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(_WriteBucket(self.output_dir, self.schema), side)
        )


def step_of(plan: Plan, ps: PlannedStage) -> int:
    for step in plan.steps:
        if step.kind == "segment" and (ps in step.stages or step.gate is ps):
            return step.index
    raise KeyError(ps.label)


class BeamRunner:
    name = "beam"

    def __init__(self, workers: int = 1, beam_args: list[str] | None = None, progress=None):
        self.workers = workers
        self.beam_args = beam_args or []
        self.progress = progress

    def execute(self, plan: Plan) -> Execution:
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
        install_log_redaction()  # Beam warns about options it does not know, values and all
        remember_secrets(self.beam_args)
        removed_dir = engine.work_root(plan) / f"beam-{plan.fingerprint[:12]}"
        for old in glob.glob(str(removed_dir / "removed*")):
            os.remove(old)
        os.makedirs(removed_dir, exist_ok=True)
        if self.progress is not None:
            from pipelines.redaction import redact

            how = redact(self.beam_args) if self.beam_args else f"FnApiRunner x{self.workers}"
            self.progress.log(f"beam: {len(plan.shards)} shards, {len(plan.stages)} stages, {how}")
        p = new_pipeline(self.workers, self.beam_args)
        records, removed = (
            p | "Shards" >> beam.Create(list(range(len(plan.shards))))
            | "Spread" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(ReadShard(plan)).with_outputs(REMOVED, main="records")
        )
        all_removed = [removed]
        for ps in plan.stages:
            if ps.shape == "whole-dataset":
                continue  # run by the driver afterwards, on what this pipeline publishes
            step = step_of(plan, ps)
            if isinstance(ps.stage, CollectionStage):
                records, removed = records | ApplyCollectionStage(ps, step)
            else:
                records, removed = records | ps.label >> beam.ParDo(ApplyRecordStage(ps, step)).with_outputs(
                    REMOVED, main="records")
            all_removed.append(removed)
        _ = records | "Publish" >> WriteBuckets(plan.records_dir, plan.spec.output.records_per_file,
                                                plan.records_schema)
        (
            all_removed | "AllRemoved" >> beam.Flatten()
            | "RemovedJson" >> beam.Map(lambda r: json.dumps(r, ensure_ascii=False, sort_keys=True))
            | "WriteRemoved" >> beam.io.WriteToText(str(removed_dir / "removed"), file_name_suffix=".jsonl")
        )
        result = p.run()
        result.wait_until_finish()
        stats = self._stats(plan, result)
        counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
        per_input = {int(c.key.metric.name.split("|")[1]): int(c.committed or c.attempted or 0)
                     for c in counters if c.key.metric.name.startswith("input|")}
        removed_rows = []
        for f in sorted(glob.glob(str(removed_dir / "removed*.jsonl"))):
            with open(f, encoding="utf-8") as fh:
                removed_rows.extend(json.loads(line) for line in fh if line.strip())
        files = sorted(glob.glob(os.path.join(plan.records_dir, "data", "train-*.parquet")))
        n_expected = stats[-1]["out"] if stats else 0
        keep = [engine.output_file(plan.records_dir, j, engine.n_output_files(n_expected,
                plan.spec.output.records_per_file)) for j in range(engine.n_output_files(
                    n_expected, plan.spec.output.records_per_file))]
        engine.remove_stale_outputs(plan.records_dir, keep)
        return Execution(stats=stats, removed=pa.Table.from_pylist(removed_rows, schema=engine.REMOVED_SCHEMA),
                         files=[str(f) for f in files if os.path.exists(f)], input_counts=per_input)

    def _stats(self, plan: Plan, result) -> list[dict]:
        values: dict[tuple[int, str], dict] = {}
        for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
            if c.key.metric.name.startswith("input|"):
                continue
            step, stage, what = c.key.metric.name.split("|")
            v = c.committed if c.committed is not None else c.attempted
            row = values.setdefault((int(step), stage), {})
            row[what] = row.get(what, 0) + int(v or 0)
        shapes = {ps.label: ps.shape for ps in plan.stages}
        order = [(0, "read")] + [(step_of(plan, ps), ps.label) for ps in plan.stages
                                 if ps.shape != "whole-dataset"]
        out = []
        for step, stage in order:
            v = values.get((step, stage), {})
            out.append({
                "step": step, "stage": stage, "shape": shapes.get(stage, "per-record"),
                "in": v.get("in", 0), "out": v.get("out", 0), "rejected": v.get("rejected", 0),
                "dropped": v.get("dropped", 0),
                "inputs_with_output": v.get("inputs_with_output", v.get("out", 0)),
                "seconds": v.get("micros", 0) / 1e6,
            })
        return out
