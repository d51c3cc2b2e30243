"""What every runner shares, and the registry of runners. A runner decides where a worker step's
tasks run; it reaches the engine only through :mod:`pipelines.engine.task`."""

from __future__ import annotations

import importlib

from pipelines.engine import task
from pipelines.engine.task import Execution, OutputFiles, Plan, Step

# The registry: a runner's name -> where its class lives (imported when chosen, so that Beam and
# datatrove load only for the runs that use them).
REGISTRY = {"local": "pipelines.runners.local:LocalRunner", "beam": "pipelines.runners.beam:BeamRunner",
            "datatrove": "pipelines.runners.datatrove:DatatroveRunner",
            "ray": "pipelines.runners.ray_cluster:RayRunner"}
RUNNERS = tuple(REGISTRY)


def runner_class(name: str) -> type[ShardedRunner]:
    if name not in REGISTRY:
        raise ValueError(f"unknown runner '{name}' (expected one of {', '.join(RUNNERS)})")
    module, _, cls = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def make_runner(name: str, *, workers: int = 1, beam_args: list[str] | None = None, progress=None):
    return runner_class(name).create(workers, beam_args or [], progress)


class ShardedRunner:
    """Runs the workers' steps task by task (how is up to ``run_tasks``: a segment's shards, a
    group step's partitions), decide and global steps on the driver, then publishes: the part
    every runner shares. With a remote output (``mirror``, its staging copy), each finished step
    is pushed to it."""

    mirror = None

    @classmethod
    def create(cls, workers: int, runner_args: list[str], progress) -> ShardedRunner:
        return cls(workers, progress)

    @classmethod
    def tasks_fetch_their_files(cls, plan: Plan, runner_args: list[str]) -> bool:
        """Whether, with a remote output, each task fetches what it reads (workers on a cluster)
        rather than the driver pulling the payload of an earlier run."""
        return False

    def run_tasks(self, plan: Plan, step: Step) -> None:
        raise NotImplementedError

    def check_tasks_finished(self, plan: Plan, step: Step, synced: bool = False) -> None:
        """After a step's tasks ran elsewhere: with ``synced`` (a remote output), fetch the workers'
        markers and small files, for the checks and the driver's steps; then every task must have
        left its marker."""
        if synced:
            task.fetch_for_driver(self.mirror)
        missing = task.todo(plan, step)
        if missing:
            raise RuntimeError(f"{self.name} finished {step.name} without shards {missing}")

    def execute(self, plan: Plan) -> Execution:
        return task.execute(plan, self.run_tasks, self.publish_files, self._pushed)

    def _pushed(self) -> None:
        if self.mirror is not None:
            self.mirror.push()

    def publish_files(self, plan: Plan, files: OutputFiles) -> None:
        task.publish_local(plan, files)
