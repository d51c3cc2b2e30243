"""The Beam runner: each step's shards (and each output file) as the elements of a Beam pipeline.

Defaults to Beam's in-process FnApiRunner (``--workers 1``) or its multi-processing mode
(``--workers N``), asked for explicitly so that Beam never tries to download the Prism runner.
Pass ``--beam-arg=--runner=DataflowRunner`` (plus its options) to run on a cluster instead.

Why shards and not records as Beam's elements: a shard is the unit every runner shares. A DoFn
runs a segment's fused stages over one shard with the engine's own code (the one outcome
classification and decision gate), so

* the stages, model-bearing ones included, run on Beam's workers, each loading its model once
  in ``setup()``, and batch records in the shard's order: batches, and so floating-point results,
  are the same on every runner;
* memory on a worker is one shard's records; the driver holds none of them;
* each finished shard leaves a completion marker, so a killed Beam run resumes where it stopped.

A group step is one more such pipeline, whose elements are partitions: the shuffle that a
``GroupByKey`` would do is done by the segment before it, which writes each shard's records by
partition (one row group each), so a partition task reads its groups from every shard. Files every
runner shares, rather than Beam's own shuffle, keep the bytes and the resume the same on every
runner. Decisions of whole-collection stages and global stages are taken by the engine on the
driver from the shards' small key or summary files, and publishing is a last Beam pipeline: shards
spilled by output file, then one element per output file.
"""

from __future__ import annotations

import json
import logging
import re

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.engine import task
from pipelines.engine.task import OutputFiles, Plan, Step
from pipelines.runners import beam_setup
from pipelines.runners.base import ShardedRunner
from pipelines.storage.redaction import install_log_redaction, remember_secrets
from stages.blocks.beam_pipeline import new_pipeline


class RunTask(beam.DoFn):
    """One shard of a segment step, or one partition of a group step, on a worker; yields its
    completion marker."""

    def __init__(self, plan: Plan, step_index: int, sync: bool = False):
        self.plan, self.step_index, self.sync = plan, step_index, sync

    def process(self, i: int):
        if self.sync:
            yield task.run_task_synced(self.plan, self.step_index, i)
        else:
            yield task.run_task(self.plan, self.plan.steps[self.step_index], i)


class SpillShard(beam.DoFn):
    """Rewrite one shard's final records with one row group per output file."""

    def __init__(self, plan: Plan, files: OutputFiles, sync: bool = False):
        self.plan, self.files, self.sync = plan, files, sync

    def process(self, i: int):
        spill = task.spill_shard_synced if self.sync else task.spill_shard
        yield i, spill(self.plan, i, self.files)


class WriteOutputFile(beam.DoFn):
    """Assemble output file ``j`` from the spilled shards' row groups."""

    def __init__(self, plan: Plan, files: OutputFiles, sync: bool = False):
        self.plan, self.files, self.sync = plan, files, sync

    def process(self, j: int, index):
        write = task.write_output_file_synced if self.sync else task.write_output_file
        write(self.plan, j, self.files, dict(index))
        yield j


def task_label(step: Step) -> str:
    """The transform's name: the step and every stage it runs (the answer it applies first, its
    stages, what it writes for the next step's stage), so a job graph names every stage."""
    return f"Run {step.name} [{', '.join(step.labels()) or 'read'}]"


def build_task_graph(p: beam.Pipeline, plan: Plan, step: Step, todo: list[int], sync: bool = False) -> None:
    _ = (p | "Shards" >> beam.Create(todo) | "Spread" >> beam.Reshuffle()
         | task_label(step) >> beam.ParDo(RunTask(plan, step.index, sync)))


def build_publish_graph(p: beam.Pipeline, plan: Plan, files: OutputFiles, sync: bool = False) -> None:
    index = (p | "Shards" >> beam.Create(list(range(len(plan.shards)))) | "Spread" >> beam.Reshuffle()
             | "Spill shards by output file" >> beam.ParDo(SpillShard(plan, files, sync)))
    _ = (p | "Files" >> beam.Create(list(range(files.count))) | "SpreadFiles" >> beam.Reshuffle()
         | "Write output files" >> beam.ParDo(WriteOutputFile(plan, files, sync), beam.pvalue.AsList(index)))


class BeamRunner(ShardedRunner):
    name = "beam"

    def __init__(self, workers: int = 1, beam_args: list[str] | None = None, progress=None):
        self.workers = workers
        self.beam_args = (beam_args or []) + beam_setup.worker_dependencies(beam_args or [])
        self.progress = progress
        self.sync = False

    @classmethod
    def create(cls, workers: int, runner_args: list[str], progress) -> BeamRunner:
        return cls(workers, runner_args, progress)

    @classmethod
    def tasks_fetch_their_files(cls, plan: Plan, runner_args: list[str]) -> bool:
        return task.sync_wanted(plan, runner_args)

    def _pipeline(self) -> beam.Pipeline:
        return new_pipeline(self.workers, self.beam_args)

    def run_tasks(self, plan: Plan, step: Step) -> None:
        todo = task.todo(plan, step)
        if not todo:
            return
        if self.progress is not None:
            self.progress.log(f"beam: {step.name}: {len(todo)} of {len(plan.shards)} tasks to run")
        with self._pipeline() as p:
            build_task_graph(p, plan, step, todo, self.sync)
        self.check_tasks_finished(plan, step, self.sync)

    def publish_files(self, plan: Plan, files: OutputFiles) -> None:
        with self._pipeline() as p:
            build_publish_graph(p, plan, files, self.sync)
        if self.sync:
            task.fetch_for_driver(self.mirror)

    def execute(self, plan: Plan):
        if beam_setup.is_cluster(self.beam_args) and not plan.remote_output:
            raise RuntimeError(f"the workers of {beam_setup.runner_name(self.beam_args)} cannot reach the local folder "
                               f"'{plan.output_dir}' -> give --output a folder on storage they share "
                               "(gs://bucket/path, s3://bucket/path)")
        # On a cluster with a remote output, each task fetches what it reads and pushes what it wrote.
        self.sync = task.sync_wanted(plan, self.beam_args)
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
        install_log_redaction()  # Beam warns about options it does not know, values and all
        remember_secrets(self.beam_args)
        if self.progress is not None:
            from pipelines.storage.redaction import redact

            how = redact(self.beam_args) if self.beam_args else f"FnApiRunner x{self.workers}"
            self.progress.log(f"beam: {len(plan.shards)} shards, {len(plan.stages)} stages, {how}")
        return super().execute(plan)


def render_jobs(plan: Plan, workers: int, beam_args: list[str]) -> list[dict]:
    """The Beam jobs a run submits, built but not submitted: one per worker step, in order, with
    the driver's steps between them, and the publishing job. With ``--runner=DataflowRunner`` each
    job is built by Dataflow's own runner with ``--dry_run`` (options checked, the job made, nothing
    sent); with any other runner, from the pipeline's runner API graph. Every transform is listed
    by its full name, composite ones included."""
    install_log_redaction()
    args = list(beam_args) + beam_setup.worker_dependencies(beam_args)
    dataflow = beam_setup.runner_name(args) == "DataflowRunner"
    jobs: list[dict] = []
    for step in plan.steps:
        if step.on_workers:
            jobs.append(_render(lambda p, s=step: build_task_graph(p, plan, s, list(range(len(plan.shards)))),
                                step.name, workers, args, dataflow))
        else:
            jobs.append({"job": step.name, "runs_on": "driver", "transforms": [
                f"{step.kind.value} {step.central.label} (on the launching machine, from the workers' "
                f"{step.adapter.fed_with})"]})
    files = OutputFiles((("", 1),))  # the real count is known once the records are
    jobs.append(_render(lambda p: build_publish_graph(p, plan, files), "publish", workers, args, dataflow))
    return jobs


def _render(build, name: str, workers: int, args: list[str], dataflow: bool) -> dict:
    if dataflow:
        job_args = [a for a in args if not a.startswith("--dry_run")] + ["--dry_run=True"]
        if not any(a.startswith("--job_name") for a in job_args):
            job_args.append("--job_name=" + re.sub(r"[^a-z0-9-]+", "-", f"longforge-{name}".lower())[:60])
        p = beam.Pipeline(options=PipelineOptions(job_args))
        build(p)
        result = p.run()
        proto, options = result.job.proto_pipeline, json.loads(result.job.json())
        where = {"runs_on": "Dataflow", "job_name": options.get("name")}
    else:
        p = new_pipeline(workers, args)
        build(p)
        proto, where = p.to_runner_api(), {"runs_on": beam_setup.runner_name(args) or "FnApiRunner"}
    names = sorted(t.unique_name for t in proto.components.transforms.values()
                   if t.unique_name and not t.unique_name.startswith("ref_"))  # Beam's unnamed root
    return {"job": name, **where, "transforms": names}
