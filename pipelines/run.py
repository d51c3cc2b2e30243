"""The driver: runs a plan on a runner, checks the accounting, writes the card and the catalog.

Only this process writes to the catalog; runners hand their statistics and removed records back.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from catalog import Catalog
from pipelines import accounting, engine, layout, publish, storage
from pipelines.plan import CODE_VERSION, Plan, StepKind
from pipelines.progress import Progress, format_table
from pipelines.redaction import redact
from pipelines.runners import make_runner
from schemas.files import write_text_atomic


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
        produced = s["inputs_with_output"] if s["shape"] in accounting.EXPANDING else s["out"]
        if s["in"] != produced + s["rejected"] + s["dropped"]:
            bad.append(f"{s['stage']}: in={s['in']} out={produced} rejected={s['rejected']} dropped={s['dropped']}")
    # What one stage emits, the next one receives.
    for a, b in zip(stats, stats[1:], strict=False):
        if a["out"] != b["in"]:
            bad.append(f"{a['stage']} emitted {a['out']} records but {b['stage']} received {b['in']}")
    if bad:
        raise AccountingError("record counts do not reconcile: " + "; ".join(bad))


class OutputFolderError(ValueError):
    """The output folder holds what this run did not create (a user's files, another dataset)."""

    def __init__(self, message: str, fix: str):
        self.fix = fix
        super().__init__(f"{message} -> {fix}")


def check_output_folder(output_dir: str, spec_fingerprint: str, overwrite: bool = False) -> None:
    """A run writes only into a new or empty folder, or one that longforge wrote: its own earlier
    or interrupted run (resume), or, with ``overwrite``, a finished run of another spec. A remote
    folder (``s3://...``) is checked where it lies."""
    if storage.is_remote(output_dir):
        remote = storage.Mirror(output_dir)
        listing = remote.listing()
        if not listing and storage.remote_exists(output_dir) and not storage.remote_isdir(output_dir):
            raise OutputFolderError(f"output '{output_dir}' is a file", "give a folder for the output")
        entries = sorted({rel.split("/", 1)[0] for rel in listing})
        ours = ".longforge" in entries
        run_record = remote.read_text(".longforge/run.json") if ours else None
    else:
        out = Path(output_dir)
        if not out.exists():
            return
        if not out.is_dir():
            raise OutputFolderError(f"output '{output_dir}' is a file", "give a folder for the output")
        entries = sorted(e.name for e in out.iterdir())
        ours = (out / ".longforge").is_dir()
        record = out / ".longforge" / "run.json"
        run_record = record.read_text(encoding="utf-8") if ours and record.is_file() else None
    if not entries:
        return
    if not ours:
        shown = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
        raise OutputFolderError(f"output '{output_dir}' already holds files that longforge did not write ({shown}); "
                                "a run would replace or delete some of them",
                                "give --output a new or empty folder")
    try:
        previous = json.loads(run_record or "")
    except ValueError:
        return  # an interrupted run of ours: resume
    if previous.get("spec_fingerprint") != spec_fingerprint and not overwrite:
        raise OutputFolderError(
            f"output '{output_dir}' holds the finished dataset of run {previous.get('run_id')} (pipeline "
            f"'{previous.get('pipeline')}', {previous.get('records')} records) built from another spec or input; "
            "this run would replace it",
            "give --output another folder, or pass --overwrite to replace that dataset")


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run is recorded as interrupted and can be resumed."""


_stop_requested = False


def request_stop() -> None:
    """Called by the signal handler before it raises :class:`Terminated`: a library that catches
    the exception and raises its own (DuckDB's 'Query interrupted') still ends the run as
    interrupted."""
    global _stop_requested
    _stop_requested = True


def ended_by_user(e: BaseException) -> bool:
    return isinstance(e, KeyboardInterrupt) or _stop_requested


def as_interruption(e: BaseException) -> BaseException:
    """The exception to raise for ``e``: a Terminated in place of what a library made of it."""
    return e if isinstance(e, KeyboardInterrupt) or not _stop_requested else Terminated()


def run_pipeline(plan: Plan, *, runner: str = "local", workers: int = 1, beam_args: list[str] | None = None,
                 catalog: Catalog | None = None, progress: Progress | None = None,
                 overwrite: bool = False) -> RunResult:
    catalog = catalog or Catalog()
    progress = progress or Progress()
    run_id = new_run_id()
    t0 = time.time()
    check_output_folder(plan.output_dir, plan.fingerprint, overwrite)
    for note in plan.notes:
        progress.warn(f"note: {note}")
    mirror = None
    if storage.is_remote(plan.output_dir):  # worked in a local staging copy, pushed step by step
        mirror = storage.Mirror(plan.output_dir)
        mirror.staging.mkdir(parents=True, exist_ok=True)
        plan.output_dir = str(mirror.staging)
        plan.remote_output = mirror.url
    lock = _take_output_lock(plan, catalog)
    try:
        if mirror is not None:
            mirror.take_lock(run_id)
            from pipelines import worker_sync

            on_workers = runner == "beam" and worker_sync.wanted(plan, beam_args or [])
            n_pulled = mirror.pull(skip=worker_sync.PAYLOAD if on_workers else None)
            progress.log(f"remote output {mirror.url}: staged in {mirror.staging}"
                         + (f"; {n_pulled} files of an earlier run fetched" if n_pulled else ""))
        _start_run(plan, run_id, runner, workers, catalog)
    except BaseException:
        _release_lock(lock, mirror)
        raise
    try:
        result = _run(plan, run_id, t0, runner, workers, beam_args, catalog, progress, mirror)
    except BaseException as e:
        if mirror is not None and ended_by_user(e):
            try:  # what finished reaches the remote store, so another machine can resume it
                mirror.push()
            except Exception as e2:  # noqa: BLE001
                progress.warn(f"warning: finished work not pushed to {mirror.url}: {e2}")
        status = "interrupted" if ended_by_user(e) else "failed"
        try:
            catalog.finish_run(run_id, status, f"{type(e).__name__}: {e}"[:2000] if str(e) or status == "failed"
                               else type(e).__name__)
        except Exception as e2:  # noqa: BLE001 - say both: what ended the run and why the catalog lags
            progress.warn(f"warning: {e2}")
        if as_interruption(e) is e:
            raise
        raise as_interruption(e) from e
    finally:
        _release_lock(lock, mirror)
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
    _export_generations(plan, catalog)
    try:
        executor = make_runner(runner, workers=workers, beam_args=beam_args, progress=progress)
        executor.mirror = mirror
        execution = executor.execute(plan)
    finally:  # what the workers generated reaches the catalog even when the run dies
        _import_generations(plan, catalog, progress)
    check_accounting(execution.stats)
    n, n_bytes, fingerprint = publish.dataset_fingerprint(plan.output_dir)
    expected = execution.stats[-1]["out"] if execution.stats else 0
    if n != expected:
        raise AccountingError(f"the last stage emitted {expected} records but the output holds {n}")
    stats, removed, metrics = list(execution.stats), [Path(f) for f in execution.removed], {}
    n_dup, examples = publish.duplicate_ids(plan.output_dir)
    metrics["publish"] = {"duplicate_ids": n_dup}
    for label, counts in engine.collect_batches(plan).items():  # model stages: work done once, and where
        metrics.setdefault(label, {}).update(counts)
    if n_dup:
        progress.warn(f"warning: {n_dup} records share their id with another record (e.g. {examples}); "
                     "id-keyed stages (dedup, scores) cannot tell them apart: give records unique ids, "
                     "or leave 'id' out to have one derived from source and text")
    sides = _publish_side_tables(plan, run_id)  # written by the workers; published file by file
    sides += _publish_global_artifacts(plan, run_id)  # small tables global stages left on the driver
    metrics.update(engine.collect_metrics(plan))
    metrics["resume"] = engine.collect_resume(plan)  # finished work an earlier run left, reused
    meta_dir = Path(plan.output_dir) / ".longforge"
    n_removed = engine.write_rejects(removed, meta_dir / "rejects.parquet", layout.work_root(plan))
    output = _artifact(run_id, plan.spec.name, plan.output_dir, n, n_bytes, fingerprint, plan.final_schema)
    output_id = output["artifact_id"]
    lineage: list[tuple[str, str]] = []
    artifacts = [output] + [a for a, _ in sides]
    input_ids = []
    for k, inp in enumerate(plan.spec.inputs):
        # What the catalog records: a URL's user:password@ is never among it (storage.public_path).
        path = storage.public_path(inp.path if storage.is_remote(inp.path)
                                   else os.path.abspath(os.path.expanduser(inp.path)))
        parent = catalog.latest_output_artifact(path)
        if parent is None:
            parent = _artifact_id(run_id, f"input{k}")
            n_in = (execution.input_counts or {}).get(k)
            artifacts.append({
                "artifact_id": parent, "name": os.path.basename(path.rstrip("/")), "kind": "input",
                "path": path, "n_records": n_in, "n_bytes": _size(path),
                "fingerprint": _input_fingerprint(plan, k), "schema_name": None, "schema_version": None,
            })
        lineage.append((parent, output_id))
        input_ids.append(parent)
    # Side tables and global stages' answers come from the records the stages saw: the inputs.
    lineage += [(parent, a["artifact_id"]) for a, _ in sides for parent in input_ids]
    seconds = round(time.time() - t0, 3)
    _write_card(plan, run_id, runner, n, fingerprint, stats, seconds, metrics)
    if mirror is not None:
        pushed = mirror.push(final=True)
        progress.log(f"pushed to {mirror.url}: {pushed['uploaded']} files uploaded, {pushed['deleted']} stale removed")
    catalog.record_results(run_id, stage_stats=stats, rejects=str(meta_dir / "rejects.parquet"),
                           artifacts=artifacts, lineage=lineage, metrics=metrics)
    score_files = [p for a, paths in sides if a["schema_name"] == "score" for p in paths]
    for p in score_files:  # one file at a time
        _add_scores(catalog, pq.read_table(p), output_id, run_id)
    _remove_stale_work(plan)
    if mirror is not None:
        mirror.push(final=True)  # the stale work removed here goes there too
    return RunResult(run_id, storage.public_path(plan.output_dir), n, fingerprint, stats, n_removed, seconds, metrics)


def _generating_models(plan: Plan) -> list[str]:
    return sorted({ps.stage.params.model for ps in plan.stages if ps.stage.uses_generations})


def _export_generations(plan: Plan, catalog: Catalog) -> None:
    """The catalog's generations for the plan's generators, as the workers' cache (one file the
    driver rewrites; workers append to files of their own)."""
    models = _generating_models(plan)
    if not models:
        return
    rows = catalog.generations(models)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    write_text_atomic(text, layout.generation_cache_dir(plan) / "catalog.jsonl")


def _import_generations(plan: Plan, catalog: Catalog, progress: Progress) -> None:
    from gpu_jobs.generate import read_generation_lines

    folder = layout.generation_cache_dir(plan)
    if not _generating_models(plan) or not folder.is_dir():
        return
    rows = [r for f in sorted(folder.glob("gen-*.jsonl")) for r in read_generation_lines(f)]
    try:
        catalog.import_generations(rows)
    except Exception as e:  # noqa: BLE001 - the files stay; the next run imports them
        progress.warn(f"warning: generations not yet in the catalog: {e}")


def _publish_side_tables(plan: Plan, run_id: str) -> list[tuple[dict, list[Path]]]:
    """Each side table of the record-level stages (a score stage's scores, ...) as an artifact of
    its own, ``<output>/<name>/data/train-*.parquet``; returns (artifact, its files)."""
    out = []
    for name, (_, schema) in layout.side_tables(plan).items():
        folder = Path(plan.output_dir) / name
        paths = publish.publish_side_table(plan, name, folder)
        a_n, a_bytes, a_fp = publish.dataset_fingerprint(str(folder))
        out.append((_artifact(run_id, f"{plan.spec.name}:{name}", str(folder), a_n, a_bytes, a_fp, schema), paths))
    return out


def _publish_global_artifacts(plan: Plan, run_id: str) -> list[tuple[dict, list[Path]]]:
    """Small tables made on the driver: global stages' answers, and what stages make from their
    parameters once their tasks are done (``Stage.artifacts``: UtK's markers)."""
    from pipelines import global_step
    from schemas import REGISTRY
    from stages.base import GlobalContext

    tables: list[tuple[str, pa.Table]] = []
    for step in plan.steps:
        if step.kind is StepKind.GLOBAL:
            tables += [(name, pq.read_table(path)) for name, path in global_step.artifacts(plan, step).items()]
    ctx = GlobalContext(seed=plan.spec.seed, files_dir=Path(plan.output_dir) / "plots",
                        output_dir=Path(plan.output_dir), work_dir=layout.work_root(plan))
    for ps in plan.stages:
        tables += list(ps.stage.artifacts(ctx).items())
    out = []
    for name, table in tables:
        folder = Path(plan.output_dir) / name
        paths = publish.write_ordered(table, folder, plan.spec.output.records_per_file)
        a_n, a_bytes, a_fp = publish.dataset_fingerprint(str(folder), table)
        schema = next((s for s in REGISTRY.schemas.values() if s.arrow.names == table.schema.names), None)
        out.append((_artifact(run_id, f"{plan.spec.name}:{name}", str(folder), a_n, a_bytes, a_fp, schema), paths))
    return out


def _add_scores(catalog: Catalog, t: pa.Table, artifact_id: str, run_id: str) -> None:
    n_s = t.num_rows
    catalog.add_scores(pa.table({
        "sample_id": t.column("sample_id"), "artifact_id": pa.array([artifact_id] * n_s, pa.string()),
        "job": t.column("job"), "model": t.column("model"), "revision": t.column("revision"),
        "metric": t.column("metric"), "value": t.column("value"),
        "run_id": pa.array([run_id] * n_s, pa.string()), "settings": t.column("settings")}))


def _take_output_lock(plan: Plan, catalog: Catalog) -> int:
    """One run per output folder, by a kernel lock (flock) that dies with its process, so two runs
    can never both take it. A lock file that still names a pid was left by a run that died: the
    runs it left 'running' are marked 'interrupted', and this run resumes their shards."""
    lock = Path(plan.output_dir) / ".longforge" / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RuntimeError(f"another run (pid {holder}) is writing to {plan.output_dir}; "
                           "wait for it or stop it") from None
    left = os.read(fd, 64).strip()
    if left:
        catalog.mark_interrupted(storage.public_path(plan.output_dir))
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _release_lock(fd: int, mirror: storage.Mirror | None = None) -> None:
    """An emptied lock file means the last run ended on its own; the kernel lock goes with close."""
    try:
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)
        if mirror is not None:
            mirror.release_lock()


def _remove_stale_work(plan: Plan) -> None:
    """Work folders of other specs (changed parameters, other inputs) are of no further use."""
    import shutil

    current = {layout.step_dir(plan, s).name for s in plan.steps} | {f"beam-{plan.fingerprint[:12]}"}
    root = layout.work_root(plan)
    if root.exists():
        for d in root.iterdir():
            if d.is_dir() and d.name not in current:
                shutil.rmtree(d, ignore_errors=True)


def _artifact(run_id: str, name: str, path: str, n: int, n_bytes: int, fingerprint: str, schema) -> dict:
    return {"artifact_id": _artifact_id(run_id, name), "name": name, "kind": "output",
            "path": storage.public_path(path), "n_records": n, "n_bytes": n_bytes, "fingerprint": fingerprint,
            "schema_name": schema.name if schema else None, "schema_version": schema.version if schema else None}


def _artifact_id(run_id: str, what: str) -> str:
    return hashlib.sha1(f"{run_id}/{what}".encode()).hexdigest()[:16]


def _size(path: str) -> int:
    if storage.is_remote(path):
        fs, p = storage.filesystem(path)
        return int(fs.du(p)) if fs.exists(p) else 0
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if os.path.isdir(path) else 0


def _input_fingerprint(plan: Plan, k: int) -> str:
    """Inputs are identified by their files' names, sizes and modification times (cheap, stable)."""
    ident = [(s.paths, s.start, s.end) for s in plan.shards if s.input_index == k]
    files = sorted({p for s in plan.shards if s.input_index == k for p in s.paths})
    stats = [(os.path.basename(p), storage.file_size(p)) for p in files]
    return hashlib.sha256(json.dumps([stats, len(ident)]).encode()).hexdigest()


def summary_table(stats: list[dict]) -> str:
    rows = [(s["step"], s["stage"], s["in"], s["out"], s["rejected"], s["dropped"], s["seconds"]) for s in stats]
    return format_table(["step", "stage", "in", "out", "rejected", "dropped", "seconds"], rows)


def _write_card(plan: Plan, run_id: str, runner: str, n: int, fingerprint: str, stats: list[dict],
                seconds: float, metrics: dict | None = None) -> None:
    """A dataset card in the Hub's layout, so the folder can be pushed as it stands."""
    schema = plan.final_schema
    from pipelines import markdown

    fields = "\n".join(f"| {markdown.code(f.name)} | {markdown.code(f.type)} |" for f in schema.fields)
    stages = "\n".join(f"{i + 1}. {markdown.code(s.name)} "
                       f"{markdown.code(json.dumps(redact(s.stage.params.model_dump()), sort_keys=True))}"
                       for i, s in enumerate(plan.stages))
    header = yaml.safe_dump({"configs": [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/train-*.parquet"}]}], "tags": ["longforge", plan.spec.name]},
        sort_keys=False).strip()  # a name such as 1.5 or null stays a string
    description = markdown.prose(plan.spec.description.strip() or "Built with longforge.")
    accounting = "\n".join(markdown.fenced(summary_table(stats)))
    load = f"ds = datasets.load_dataset({markdown.python_string(os.path.abspath(plan.output_dir))}, split=\"train\")"
    card = f"""---
{header}
---

# {plan.spec.name}

{description}

- records: {n:,}
- schema: `{schema.ref}`
- content fingerprint: `{fingerprint}`
- pipeline spec fingerprint: `{plan.fingerprint}`
- seed: {plan.spec.seed}
- built by run `{run_id}` on the `{runner}` runner in {seconds:.1f} s

## Fields

| field | type |
|---|---|
{fields}

## Stages

{stages}

## Record accounting

{accounting}

Rejected and dropped records, with reasons, are in `.longforge/rejects.parquet` and in the catalog.
{_metrics_section(metrics)}
```python
import datasets
{load}
```
"""
    write_text_atomic(card, Path(plan.output_dir) / "README.md")
    write_text_atomic(
        json.dumps({"run_id": run_id, "pipeline": plan.spec.name, "records": n, "fingerprint": fingerprint,
                    "spec_fingerprint": plan.fingerprint, "schema": schema.ref, "stats": stats}, indent=2),
        Path(plan.output_dir) / ".longforge" / "run.json",
    )


def _metrics_section(metrics: dict | None) -> str:
    from pipelines import markdown

    if not metrics:
        return ""
    lines = ["", "## Quality metrics", "", "| stage | metric | value |", "|---|---|---|"]
    for stage, values in metrics.items():
        lines += [f"| {markdown.cell(stage)} | {markdown.cell(k)} | {v:.4f} |" if isinstance(v, float)
                  else f"| {markdown.cell(stage)} | {markdown.cell(k)} | {markdown.cell(v)} |"
                  for k, v in sorted(values.items())]
    return "\n".join(lines) + "\n"


def read_output(output_dir: str):
    """All output records as a pyarrow table (for tests and small checks)."""
    files = sorted((Path(output_dir) / "data").glob("train-*.parquet"))
    return pq.read_table(files) if files else None
