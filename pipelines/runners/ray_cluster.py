"""The Ray runner: every worker step's tasks (a segment's shards, a group step's partitions) and
the publishing tasks as Ray tasks, on a Ray cluster: the one ``--ray-address`` (or ``RAY_ADDRESS``)
names, or one started for the run on this machine.

Why Ray tasks and not datatrove's ``RayPipelineExecutor``: a longforge task is already one
engine call (:func:`pipelines.engine.task.run_task`) whose files and marker are written atomically,
so a task that dies half-way can simply run again. Ray retries a task whose worker process or node
died (``max_retries``) without help; datatrove's executor runs a group of ranks inside one actor's
process pool, where a killed pool process leaves the pool waiting. Errors raised by a stage are not
retried: they are the run's error, as on every runner.

- **Retries are recorded.** Each attempt of a task tells a small actor on the driver's node that
  it started; the driver counts the attempts after each step and the catalog gets
  ``task_retries`` (metrics, per step), so a run that survived a dead worker says so.
- **Models load once per Ray worker.** The plan travels once to the object store; each worker
  process keeps the plan it unpickled (so its stages, set up once, keep their models) for every
  task of the run it is given.
- **Remote storage** works as on Beam: with an ``s3://``/``gs://`` output each task fetches what
  it reads and pushes what it wrote, and the output files are written by Ray tasks too.
- **Nothing but markers comes back**: tasks return their completion markers (counts), never
  records.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections import Counter

from pipelines.engine import task
from pipelines.engine.task import Execution, OutputFiles, Plan, Progress, Step
from pipelines.runners.base import ShardedRunner

#: Environment that the driver's tasks need on every worker (model home, test hooks, the generation
#: key a run was allowed to send): forwarded with each task, since a cluster's workers were started
#: by its own processes, not by this one.
FORWARDED_ENV_PREFIXES = ("LONGFORGE_",)
DEFAULT_MAX_RETRIES = 3
#: The object store of a cluster started for the run: markers and the plan are all it holds.
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024

_plans: dict[str, Plan] = {}  # in a worker process: the run's plan, unpickled once (stages keep their models)


def _forwarded_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
    from gpu_jobs.generate import ALLOW_KEY_ENV

    allowed = os.environ.get(ALLOW_KEY_ENV)
    for name in (allowed, "OPENAI_API_KEY"):  # the generation keys a run may send (--api-key-env)
        if name and name in os.environ:
            env[name] = os.environ[name]
    return env


def _worker_plan(key: str, boxed_plan: list) -> Plan:
    """This worker's copy of the run's plan (``boxed_plan``: the object reference in a list, so Ray
    does not unpickle it for every task)."""
    if key not in _plans:
        import ray

        _plans.clear()  # one run's plan at a time in a worker
        _plans[key] = ray.get(boxed_plan[0])
    return _plans[key]


def _in_worker(job: str, key: str, boxed_plan: list, env: dict, log, step_index: int, i: int, sync: bool,
               files: OutputFiles | None = None, index: dict | None = None):
    """One task on a Ray worker: a worker step's task, a shard's spill, or an output file."""
    import ray

    for name in [k for k in os.environ if k.startswith(FORWARDED_ENV_PREFIXES) and k not in env]:
        del os.environ[name]  # a hook or setting of an earlier run on this worker
    os.environ.update(env)
    ray.get(log.started.remote(job, step_index, i))
    plan = _worker_plan(key, boxed_plan)
    if job == "task":
        if sync:
            return task.run_task_synced(plan, step_index, i)
        return task.run_task(plan, plan.steps[step_index], i)
    if job == "spill":
        return (task.spill_shard_synced if sync else task.spill_shard)(plan, i, files)
    (task.write_output_file_synced if sync else task.write_output_file)(plan, i, files, index)
    return i


class _Attempts:
    """On the driver's node: how many times each task started (a retried task starts again)."""

    def __init__(self):
        self.counts: Counter = Counter()

    def started(self, job: str, step_index: int, i: int) -> None:
        self.counts[(job, step_index, i)] += 1

    def retries(self) -> dict[tuple, int]:
        return {k: n - 1 for k, n in self.counts.items() if n > 1}


class RayRunner(ShardedRunner):
    name = "ray"

    def __init__(self, workers: int = 1, progress: Progress | None = None, address: str | None = None,
                 max_retries: int = DEFAULT_MAX_RETRIES):
        self.workers = workers
        self.progress = progress or Progress(enabled=False)
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.max_retries = max_retries
        self.sync = False
        self._remote = self._log = self._boxed = None
        self._key = ""

    @classmethod
    def create(cls, workers: int, runner_args: list[str], progress) -> RayRunner:
        given = [a.split("=", 1)[1] for a in runner_args if a.startswith("--ray-address=")]
        return cls(workers, progress, given[-1] if given else None)  # the command line's, given after the file's

    @classmethod
    def tasks_fetch_their_files(cls, plan: Plan, runner_args: list[str]) -> bool:
        return bool(plan.remote_output)  # a cluster's workers may share no disk with the driver

    def execute(self, plan: Plan) -> Execution:
        import ray

        started_here = not ray.is_initialized()
        on_term = signal.getsignal(signal.SIGTERM)
        if started_here:
            try:
                self._start(ray)
            finally:  # ray.init installs its own SIGTERM handler: a kill must still end the run as interrupted
                signal.signal(signal.SIGTERM, on_term)
        try:
            self._prepare(ray, plan)
            execution = super().execute(plan)
            execution.retries = self._retries(plan)
            return execution
        finally:
            self._remote = self._log = self._boxed = None
            if started_here:
                ray.shutdown()
                signal.signal(signal.SIGTERM, on_term)

    def _start(self, ray) -> None:
        if self.address:
            self.progress.log(f"ray: joining the cluster at {self.address} (its CPUs, not --workers, set the "
                              "parallelism)")
            ray.init(address=self.address, log_to_driver=False, configure_logging=False)
        else:  # "local": a new cluster, never one that `ray start` left running on this machine
            self.progress.log(f"ray: starting a local cluster of {self.workers} CPU(s) for this run")
            ray.init(address="local", num_cpus=self.workers, include_dashboard=False, log_to_driver=False,
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES, configure_logging=False)

    def _prepare(self, ray, plan: Plan) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if ray.available_resources().get("CPU", 0) < 1 and ray.cluster_resources().get("CPU", 0) < 1:
            raise RuntimeError("the Ray cluster has no CPU to run tasks on")
        self.sync = self.tasks_fetch_their_files(plan, [])
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self._log = ray.remote(num_cpus=0, scheduling_strategy=here)(_Attempts).remote()
        self._boxed = [ray.put(plan)]
        self._key = uuid.uuid4().hex  # this run's plan, whatever a worker kept from another
        self._remote = ray.remote(num_cpus=1, max_retries=self.max_retries, retry_exceptions=False)(_in_worker)
        self._env = _forwarded_env()

    def _submit(self, job: str, step_index: int, i: int, **kw):
        return self._remote.remote(job, self._key, self._boxed, self._env, self._log, step_index, i, self.sync, **kw)

    def _wait_all(self, refs: list, bar=None) -> list:
        """Every task's result, in the order given; the first task error ends the run (the other
        tasks are cancelled, their finished work kept for the rerun)."""
        import ray
        from ray.exceptions import RayTaskError

        pending, results = list(refs), {}
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
                for ref in done:
                    results[ref] = ray.get(ref)
                    if bar is not None:
                        bar.update_with(results[ref])
        except BaseException as e:
            for ref in pending:
                ray.cancel(ref, force=True)
            cause = getattr(e, "cause", None) if isinstance(e, RayTaskError) else None
            if isinstance(cause, Exception):  # the stage's own error, as every runner reports it
                raise cause from None
            raise
        return [results[r] for r in refs]

    def run_tasks(self, plan: Plan, step: Step) -> None:
        todo = task.todo(plan, step)
        if not todo:
            return
        bar = self.progress.bar(step.name, total=len(plan.shards), initial=len(plan.shards) - len(todo))
        try:
            self._wait_all([self._submit("task", step.index, i) for i in todo], bar)
        finally:
            bar.close()
        self.check_tasks_finished(plan, step, self.sync)

    def publish_files(self, plan: Plan, files: OutputFiles) -> None:
        if not self.sync:  # one disk: the driver writes the files, one at a time
            task.publish_local(plan, files)
            return
        spills = self._wait_all([self._submit("spill", -1, i, files=files) for i in range(len(plan.shards))])
        index = dict(enumerate(spills))
        self._wait_all([self._submit("write", -1, j, files=files, index=index) for j in range(files.count)])
        task.fetch_for_driver(self.mirror)

    def _retries(self, plan: Plan) -> dict[str, int]:
        """Retried tasks per worker step (and ``publish``), from the attempts the actor counted."""
        import ray

        out: Counter = Counter()
        for (job, step_index, _), n in ray.get(self._log.retries.remote()).items():
            out[plan.steps[step_index].name if job == "task" else "publish"] += n
        return dict(out)
