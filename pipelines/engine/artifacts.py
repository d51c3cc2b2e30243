"""The catalog's rows for what a run made: the output, its side tables and the small tables global
stages left (each an artifact with its schema), the inputs it read, and the generations the
workers' caches share with the catalog."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from catalog import Catalog
from pipelines import storage
from pipelines.engine import layout, publish
from pipelines.engine.progress import Progress
from pipelines.engine.steps import Plan
from schemas.files import write_text_atomic


def generating_models(plan: Plan) -> list[str]:
    return sorted({ps.stage.params.model for ps in plan.stages if ps.stage.uses_generations})


def export_generations(plan: Plan, catalog: Catalog) -> None:
    """The catalog's generations for the plan's generators, as the workers' cache (one file the
    driver rewrites; workers append to files of their own)."""
    models = generating_models(plan)
    if not models:
        return
    rows = catalog.generations(models)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    write_text_atomic(text, layout.generation_cache_dir(plan) / "catalog.jsonl")


def import_generations(plan: Plan, catalog: Catalog, progress: Progress) -> None:
    from gpu_jobs.generate import read_generation_lines

    folder = layout.generation_cache_dir(plan)
    if not generating_models(plan) or not folder.is_dir():
        return
    rows = [r for f in sorted(folder.glob("gen-*.jsonl")) for r in read_generation_lines(f)]
    try:
        catalog.import_generations(rows)
    except Exception as e:  # noqa: BLE001 - the files stay; the next run imports them
        progress.warn(f"warning: generations not yet in the catalog: {e}")


def publish_side_tables(plan: Plan, run_id: str) -> list[tuple[dict, list[Path]]]:
    """Each side table of the record-level stages (a score stage's scores, ...) as an artifact of
    its own, ``<output>/<name>/data/train-*.parquet``; returns (artifact, its files)."""
    out = []
    for name, (_, schema) in layout.side_tables(plan).items():
        folder = Path(plan.output_dir) / name
        paths = publish.publish_side_table(plan, name, folder)
        a_n, a_bytes, a_fp = publish.dataset_fingerprint(str(folder))
        out.append((artifact(run_id, f"{plan.spec.name}:{name}", str(folder), a_n, a_bytes, a_fp, schema), paths))
    return out


def publish_global_artifacts(plan: Plan, run_id: str) -> list[tuple[dict, list[Path]]]:
    """Small tables made on the driver: global stages' answers, and what stages make from their
    parameters once their tasks are done (``Stage.artifacts``: UtK's markers)."""
    from schemas import REGISTRY
    from stages.base import GlobalContext

    tables: list[tuple[str, pa.Table]] = []
    for step in plan.steps:
        if not step.on_workers:
            answer = step.adapter.driver_answer(plan, step)
            tables += [(name, pq.read_table(path)) for name, path in answer.get("artifacts", {}).items()]
    ctx = GlobalContext(seed=plan.spec.seed, files_dir=Path(plan.output_dir) / "plots",
                        output_dir=Path(plan.output_dir), work_dir=layout.work_root(plan))
    for ps in plan.stages:
        tables += list(ps.stage.artifacts(ctx).items())
    out = []
    for name, table in tables:
        folder = Path(plan.output_dir) / name
        paths = publish.write_ordered(table, folder, plan.spec.output.records_per_file)
        a_n, a_bytes, a_fp = publish.dataset_fingerprint(str(folder), table)
        schema = REGISTRY.of_table(table)  # the table names its schema; it is never guessed from columns
        out.append((artifact(run_id, f"{plan.spec.name}:{name}", str(folder), a_n, a_bytes, a_fp, schema), paths))
    return out


def artifact(run_id: str, name: str, path: str, n: int, n_bytes: int, fingerprint: str, schema) -> dict:
    return {"artifact_id": artifact_id(run_id, name), "name": name, "kind": "output",
            "path": storage.public_path(path), "n_records": n, "n_bytes": n_bytes, "fingerprint": fingerprint,
            "schema_name": schema.name if schema else None, "schema_version": schema.version if schema else None}


def artifact_id(run_id: str, what: str) -> str:
    return hashlib.sha1(f"{run_id}/{what}".encode()).hexdigest()[:16]


def size(path: str) -> int:
    if storage.is_remote(path):
        fs, p = storage.filesystem(path)
        return int(fs.du(p)) if fs.exists(p) else 0
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if os.path.isdir(path) else 0


def input_fingerprint(plan: Plan, k: int) -> str:
    """Inputs are identified by their files' names, sizes and modification times (cheap, stable)."""
    ident = [(s.paths, s.start, s.end) for s in plan.shards if s.input_index == k]
    files = sorted({p for s in plan.shards if s.input_index == k for p in s.paths})
    stats = [(os.path.basename(p), storage.file_size(p)) for p in files]
    return hashlib.sha256(json.dumps([stats, len(ident)]).encode()).hexdigest()
