"""The default runner: in-process, shard by shard, resumable, with an optional process pool."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

from pipelines import engine
from pipelines.plan import Plan, Step, StepKind
from pipelines.progress import Progress
from pipelines.runners import Execution


def _run_shard(args: tuple[Plan, int, int]) -> dict:
    plan, step_index, i = args
    return engine.run_segment_shard(plan, plan.steps[step_index], i)


def run_segment(plan: Plan, step: Step, workers: int, progress: Progress) -> None:
    todo = [i for i in range(len(plan.shards)) if not engine.shard_done(plan, step, i)]
    bar = progress.bar(step.name, total=len(plan.shards), initial=len(plan.shards) - len(todo))
    if workers <= 1 or len(todo) <= 1:
        for i in todo:
            bar.update_with(engine.run_segment_shard(plan, step, i))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for marker in pool.map(_run_shard, [(plan, step.index, i) for i in todo]):
                bar.update_with(marker)
    bar.close()


class ShardedRunner:
    """Runs segments shard by shard (how is up to ``run_segment``), decisions on the driver, then
    publishes: the part the local and datatrove runners share."""

    def run_segment(self, plan: Plan, step: Step) -> None:
        raise NotImplementedError

    def execute(self, plan: Plan) -> Execution:
        for step in plan.steps:
            if step.kind is StepKind.SEGMENT:
                self.run_segment(plan, step)
            elif step.kind is StepKind.DECIDE:
                engine.run_decide(plan, step)
            # StepKind.DATASET: the driver's, after publishing
        final = plan.segments[-1]
        n_files = engine.n_output_files(engine.segment_records(plan, final), plan.spec.output.records_per_file)
        self.publish_files(plan, n_files)
        paths = engine.finish_publish(plan, n_files)
        return Execution(stats=engine.collect_stats(plan), removed=engine.collect_removed(plan),
                         files=[str(p) for p in paths], input_counts=engine.input_counts(plan))

    def publish_files(self, plan: Plan, n_files: int) -> None:
        engine.publish_local(plan, n_files)


class LocalRunner(ShardedRunner):
    name = "local"

    def __init__(self, workers: int = 1, progress: Progress | None = None):
        self.workers = workers
        self.progress = progress or Progress(enabled=False)

    def run_segment(self, plan: Plan, step: Step) -> None:
        run_segment(plan, step, self.workers, self.progress)
