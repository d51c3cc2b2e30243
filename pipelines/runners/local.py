"""The default runner: in-process, shard by shard, resumable, with an optional process pool."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from pipelines import decide, engine, global_step, layout, publish
from pipelines.plan import Plan, Step, StepKind
from pipelines.progress import Progress
from pipelines.runners import Execution


def _run_task(args: tuple[Plan, int, int]) -> dict:
    plan, step_index, i = args
    return engine.run_task(plan, plan.steps[step_index], i)


def run_tasks(plan: Plan, step: Step, workers: int, progress: Progress) -> None:
    """A segment's shards or a group step's partitions, in this process or a pool of ``workers``."""
    todo = [i for i in range(len(plan.shards)) if not layout.shard_done(plan, step, i)]
    bar = progress.bar(step.name, total=len(plan.shards), initial=len(plan.shards) - len(todo))
    if workers <= 1 or len(todo) <= 1:
        for i in todo:
            bar.update_with(engine.run_task(plan, step, i))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for marker in pool.map(_run_task, [(plan, step.index, i) for i in todo]):
                bar.update_with(marker)
    bar.close()


class ShardedRunner:
    """Runs the workers' steps task by task (how is up to ``run_tasks``: a segment's shards, a
    group step's partitions), decide and global steps on the driver, then publishes: the part
    every runner shares. With a remote output (``mirror``, its staging copy), each finished step
    is pushed to it."""

    mirror = None

    def run_tasks(self, plan: Plan, step: Step) -> None:
        raise NotImplementedError

    def execute(self, plan: Plan) -> Execution:
        for step in plan.steps:
            if step.kind in (StepKind.SEGMENT, StepKind.GROUP):
                self.run_tasks(plan, step)
            elif step.kind is StepKind.DECIDE:
                decide.run_decide(plan, step)
                engine.fault_point(f"decide:{step.index}:0")
            elif step.kind is StepKind.GLOBAL:
                global_step.run_global(plan, step, Path(plan.output_dir) / "plots")
                engine.fault_point(f"global:{step.index}:0")
            if self.mirror is not None:
                self.mirror.push()
        files = publish.output_files(plan)
        self.publish_files(plan, files)
        paths = publish.finish_publish(plan, files)
        return Execution(stats=engine.collect_stats(plan), removed=[str(f) for f in engine.removed_files(plan)],
                         files=[str(p) for p in paths], input_counts=engine.input_counts(plan))

    def publish_files(self, plan: Plan, files: publish.OutputFiles) -> None:
        publish.publish_local(plan, files)


class LocalRunner(ShardedRunner):
    name = "local"

    def __init__(self, workers: int = 1, progress: Progress | None = None):
        self.workers = workers
        self.progress = progress or Progress(enabled=False)

    def run_tasks(self, plan: Plan, step: Step) -> None:
        run_tasks(plan, step, self.workers, self.progress)
