"""The driver: runs a plan on a runner, checks the accounting, writes the card and the catalog.

Only this process writes to the catalog; runners hand their statistics and removed records back.
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq

from catalog import Catalog
from pipelines import storage
from pipelines.engine import artifacts, card, harvest, interrupts, layout, output_guard, publish
from pipelines.engine.plan import CODE_VERSION, Plan
from pipelines.engine.progress import Progress
from pipelines.runners.base import make_runner, runner_class
from pipelines.storage.redaction import redact


class AccountingError(RuntimeError):
    """Records in != out + rejected + dropped for some stage: something was lost or invented."""


@dataclass
class RunResult:
    run_id: str
    output_dir: str
    n_records: int
    fingerprint: str
    stats: list[dict]
    n_removed: int
    seconds: float
    metrics: dict


def new_run_id() -> str:
    return datetime.now(UTC).strftime("run-%Y%m%dT%H%M%S-") + secrets.token_hex(3)


def check_accounting(stats: list[dict]) -> None:
    bad = []
    for s in stats:
        if not s["reconciles"]:
            produced = s["inputs_with_output"] if s.get("expands") else s["out"]
            bad.append(f"{s['stage']}: in={s['in']} out={produced} rejected={s['rejected']} dropped={s['dropped']}")
    # What one stage emits, the next one receives.
    for a, b in zip(stats, stats[1:], strict=False):
        if a["out"] != b["in"]:
            bad.append(f"{a['stage']} emitted {a['out']} records but {b['stage']} received {b['in']}")
    if bad:
        raise AccountingError("record counts do not reconcile: " + "; ".join(bad))


def run_pipeline(plan: Plan, *, runner: str = "local", workers: int = 1, beam_args: list[str] | None = None,
                 catalog: Catalog | None = None, progress: Progress | None = None,
                 overwrite: bool = False) -> RunResult:
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RuntimeError("run_pipeline was called while a worker process was starting: the script that calls it "
                           "runs again in each worker; put the call under `if __name__ == \"__main__\":`")
    catalog = catalog or Catalog()
    progress = progress or Progress()
    run_id = new_run_id()
    t0 = time.time()
    output_guard.check_output_folder(plan.output_dir, plan.fingerprint, overwrite)
    for note in plan.notes:
        progress.warn(f"note: {note}")
    mirror = None
    if storage.is_remote(plan.output_dir):  # worked in a local staging copy, pushed step by step
        mirror = storage.Mirror(plan.output_dir)
        mirror.staging.mkdir(parents=True, exist_ok=True)
        plan.output_dir = str(mirror.staging)
        plan.remote_output = mirror.url
    lock = output_guard.take_output_lock(plan, catalog)
    try:
        if mirror is not None:
            mirror.take_lock(run_id)
            from pipelines.engine import worker_sync

            on_workers = runner_class(runner).tasks_fetch_their_files(plan, beam_args or [])
            n_pulled = mirror.pull(skip=worker_sync.PAYLOAD if on_workers else None)
            progress.log(f"remote output {mirror.url}: staged in {mirror.staging}"
                         + (f"; {n_pulled} files of an earlier run fetched" if n_pulled else ""))
        _start_run(plan, run_id, runner, workers, catalog)
    except BaseException:
        output_guard.release_lock(lock, mirror)
        raise
    try:
        result = _run(plan, run_id, t0, runner, workers, beam_args, catalog, progress, mirror)
    except BaseException as e:
        if mirror is not None and interrupts.ended_by_user(e):
            try:  # what finished reaches the remote store, so another machine can resume it
                mirror.push()
            except Exception as e2:  # noqa: BLE001
                progress.warn(f"warning: finished work not pushed to {mirror.url}: {e2}")
        status = "interrupted" if interrupts.ended_by_user(e) else "failed"
        try:
            catalog.finish_run(run_id, status, f"{type(e).__name__}: {e}"[:2000] if str(e) or status == "failed"
                               else type(e).__name__)
        except Exception as e2:  # noqa: BLE001 - say both: what ended the run and why the catalog lags
            progress.warn(f"warning: {e2}")
        if interrupts.as_interruption(e) is e:
            raise
        raise interrupts.as_interruption(e) from e
    finally:
        output_guard.release_lock(lock, mirror)
    try:
        catalog.finish_run(run_id, "succeeded")
    except Exception as e:  # noqa: BLE001 - the data is complete; the catalog catches up later
        progress.warn(f"warning: {e}")
    return result


def _start_run(plan: Plan, run_id: str, runner: str, workers: int, catalog: Catalog) -> None:
    catalog.start_run(
        run_id, pipeline=plan.spec.name, pipeline_file=os.path.abspath(plan.loaded.file), runner=runner,
        workers=workers, spec_fingerprint=plan.fingerprint, seed=plan.spec.seed,
        params=redact(plan.spec.model_dump()), code_version=CODE_VERSION,
        output_path=storage.public_path(plan.output_dir),
    )


def _run(plan: Plan, run_id: str, t0: float, runner: str, workers: int, beam_args: list[str] | None,
         catalog: Catalog, progress: Progress, mirror: storage.Mirror | None = None) -> RunResult:
    plan.run_id = run_id
    artifacts.export_generations(plan, catalog)
    try:
        executor = make_runner(runner, workers=workers, beam_args=beam_args, progress=progress)
        executor.mirror = mirror
        execution = executor.execute(plan)
    finally:  # what the workers generated reaches the catalog even when the run dies
        artifacts.import_generations(plan, catalog, progress)
    check_accounting(execution.stats)
    n, n_bytes, fingerprint = publish.dataset_fingerprint(plan.output_dir)
    expected = execution.stats[-1]["out"] if execution.stats else 0
    if n != expected:
        raise AccountingError(f"the last stage emitted {expected} records but the output holds {n}")
    stats, removed, metrics = list(execution.stats), [Path(f) for f in execution.removed], {}
    n_dup, examples = publish.duplicate_ids(plan.output_dir)
    metrics["publish"] = {"duplicate_ids": n_dup}
    for label, counts in harvest.collect_batches(plan).items():  # model stages: work done once, and where
        metrics.setdefault(label, {}).update(counts)
    if n_dup:
        progress.warn(f"warning: {n_dup} records share their id with another record (e.g. {examples}); "
                     "id-keyed stages (dedup, scores) cannot tell them apart: give records unique ids, "
                     "or leave 'id' out to have one derived from source and text")
    sides = artifacts.publish_side_tables(plan, run_id)  # written by the workers; published file by file
    sides += artifacts.publish_global_artifacts(plan, run_id)  # small tables global stages left on the driver
    metrics.update(harvest.collect_metrics(plan))
    metrics["resume"] = harvest.collect_resume(plan)  # finished work an earlier run left, reused
    for step_name, retried in execution.retries.items():  # tasks a cluster ran again after a worker died
        metrics.setdefault(step_name, {})["task_retries"] = retried
        progress.warn(f"note: {retried} task(s) of {step_name} ran again after their worker died")
    meta_dir = Path(plan.output_dir) / ".longforge"
    n_removed = harvest.write_rejects(removed, meta_dir / "rejects.parquet", layout.work_root(plan))
    output = artifacts.artifact(run_id, plan.spec.name, plan.output_dir, n, n_bytes, fingerprint, plan.final_schema)
    output_id = output["artifact_id"]
    lineage: list[tuple[str, str]] = []
    made = [output] + [a for a, _ in sides]
    input_ids = []
    for k, inp in enumerate(plan.spec.inputs):
        # What the catalog records: a URL's user:password@ is never among it (storage.public_path).
        path = storage.public_path(inp.path if storage.is_remote(inp.path)
                                   else os.path.abspath(os.path.expanduser(inp.path)))
        parent = catalog.latest_output_artifact(path)
        if parent is None:
            parent = artifacts.artifact_id(run_id, f"input{k}")
            n_in = (execution.input_counts or {}).get(k)
            made.append({
                "artifact_id": parent, "name": os.path.basename(path.rstrip("/")), "kind": "input",
                "path": path, "n_records": n_in, "n_bytes": artifacts.size(path),
                "fingerprint": artifacts.input_fingerprint(plan, k), "schema_name": None, "schema_version": None,
            })
        lineage.append((parent, output_id))
        input_ids.append(parent)
    # Side tables and global stages' answers come from the records the stages saw: the inputs.
    lineage += [(parent, a["artifact_id"]) for a, _ in sides for parent in input_ids]
    seconds = round(time.time() - t0, 3)
    card.write_card(plan, run_id, runner, n, fingerprint, stats, seconds, metrics)
    if mirror is not None:
        pushed = mirror.push(final=True)
        progress.log(f"pushed to {mirror.url}: {pushed['uploaded']} files uploaded, {pushed['deleted']} stale removed")
    catalog.record_results(run_id, stage_stats=stats, rejects=str(meta_dir / "rejects.parquet"),
                           artifacts=made, lineage=lineage, metrics=metrics)
    score_files = [p for a, paths in sides if a["schema_name"] == "score" for p in paths]
    for p in score_files:  # one file at a time
        t = pq.read_table(p, columns=["sample_id", "job", "model", "revision", "metric", "value", "settings"])
        catalog.add_score_rows(t, artifact_id=output_id, run_id=run_id)
    _remove_stale_work(plan)
    if mirror is not None:
        mirror.push(final=True)  # the stale work removed here goes there too
    return RunResult(run_id, storage.public_path(plan.output_dir), n, fingerprint, stats, n_removed, seconds, metrics)


def _remove_stale_work(plan: Plan) -> None:
    """Work folders of other specs (changed parameters, other inputs) are of no further use."""
    import shutil

    current = {layout.step_dir(plan, s).name for s in plan.steps} | {f"beam-{plan.fingerprint[:12]}"}
    root = layout.work_root(plan)
    if root.exists():
        for d in root.iterdir():
            if d.is_dir() and d.name not in current:
                shutil.rmtree(d, ignore_errors=True)


def read_output(output_dir: str):
    """All output records as a pyarrow table (for tests and small checks)."""
    files = sorted((Path(output_dir) / "data").glob("train-*.parquet"))
    return pq.read_table(files) if files else None
