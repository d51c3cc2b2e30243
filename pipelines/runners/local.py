"""The default runner: in-process, shard by shard, resumable, with an optional process pool."""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

from pipelines.engine import task
from pipelines.engine.task import Plan, Progress, Step
from pipelines.runners.base import ShardedRunner


def _run_task(args: tuple[Plan, int, int]) -> dict:
    plan, step_index, i = args
    return task.run_task(plan, plan.steps[step_index], i)


def _adopt(environ: dict[str, str], cwd: str) -> None:
    """A worker takes the driver's environment and folder as they are when its pool starts."""
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)


def _main_without_file(plan: Plan) -> bool:
    """Whether a stage of the plan is defined in a ``__main__`` that a new process cannot import
    again (a notebook, ``python -c``, standard input)."""
    file = getattr(sys.modules.get("__main__"), "__file__", None)
    return any(type(ps.stage).__module__ == "__main__" for ps in plan.stages) and not (file and os.path.isfile(file))


def _pool(plan: Plan, workers: int) -> ProcessPoolExecutor:
    """Workers started from a fork server, not forked from the driver: a forked worker would hold
    (and count in its memory) whatever the driver holds when the step starts, which grows with the
    run; these start from the server's few imports and take the driver's environment and folder.
    Stages defined in a notebook cell exist only in the driver: those runs fork."""
    if _main_without_file(plan):
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["pipelines.engine.task"])
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_adopt,
                               initargs=(dict(os.environ), os.getcwd()))


def run_tasks(plan: Plan, step: Step, workers: int, progress: Progress) -> None:
    """A segment's shards or a group step's partitions, in this process or a pool of ``workers``."""
    todo = task.todo(plan, step)
    bar = progress.bar(step.name, total=len(plan.shards), initial=len(plan.shards) - len(todo))
    if workers <= 1 or len(todo) <= 1:
        for i in todo:
            bar.update_with(task.run_task(plan, step, i))
    else:
        with _pool(plan, workers) as pool:
            for marker in pool.map(_run_task, [(plan, step.index, i) for i in todo]):
                bar.update_with(marker)
    bar.close()


class LocalRunner(ShardedRunner):
    name = "local"

    def __init__(self, workers: int = 1, progress: Progress | None = None):
        self.workers = workers
        self.progress = progress or Progress(enabled=False)

    def run_tasks(self, plan: Plan, step: Step) -> None:
        run_tasks(plan, step, self.workers, self.progress)
