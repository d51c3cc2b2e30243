"""A scoring job over samples: part by part, resumable (samples already scored with the same
content are skipped), each part's scores into the side table and the catalog, what cannot be
scored into the catalog's rejects."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from gpu_jobs.scoring import SIDE_SCHEMA, ScoreSettings, score_part


def sample_length(r: dict, s: ScoreSettings) -> int:
    """A cheap length to order samples by (characters), so parts hold samples of similar size."""
    if s.job == "perplexity":
        return len(r.get(s.text_field) or "")
    if s.job == "response-loglik":
        return len(r.get(s.prompt_field) or "") + len(r.get(s.response_field) or "")
    return len(r.get(s.context_field) or "") + len(r.get(s.response_field) or "")


@dataclass
class JobResult:
    scored: int  # samples scored by this run
    skipped: int  # samples already in the catalog
    rows: int  # score rows written to the catalog
    tokens: int
    seconds: float
    output: Path
    rejected: int = 0  # samples that cannot be scored (in the catalog's rejects, with the reason)


def run_scoring(lm, settings: ScoreSettings, records: list[dict], *, catalog, output: Path, artifact_id: str | None,
                run_id: str, part_size: int = 64, progress=None, stop_after_parts: int | None = None) -> JobResult:
    """Score ``records`` (each with an ``id``), part by part, skipping samples already scored with
    the same content. Records that cannot be scored go to the catalog's rejects with the reason."""
    from schemas.files import write_parquet_atomic, write_text_atomic

    t0 = time.time()
    settings.check_window(settings.max_tokens or lm.max_positions)
    label = f"score:{settings.job}"
    bad = [(r["id"], *why) for r in records if (why := settings.invalid(r)) is not None]
    bad_ids = {b[0] for b in bad}
    records = [r for r in records if r["id"] not in bad_ids]
    settings_json = json.dumps({**settings.identity(), "hash": settings.hash()}, sort_keys=True)
    hashes = {r["id"]: settings.content_hash(r) for r in records}
    done = {r["id"] for r in records if (r["id"], hashes[r["id"]]) in
            catalog.scored_keys(settings.job, lm.name, lm.revision, settings.hash())}
    ordered = sorted(records, key=lambda r: (sample_length(r, settings), r["id"]))
    parts = [ordered[i:i + part_size] for i in range(0, len(ordered), part_size)]
    output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps({"job": settings.job, "model": lm.name, "revision": lm.revision,
                                  "settings": json.loads(settings_json)}, indent=2, sort_keys=True) + "\n",
                      output / "_job.json")  # "_": Parquet readers of the folder skip it
    tokens = rows_written = scored = 0
    bar = progress.bar(f"score {settings.job}", total=len(records), initial=len(done),
                       unit="sample") if progress else None

    def on_tokens(n):
        nonlocal tokens
        tokens += n

    for k, part in enumerate(parts):  # noqa: B007 - k counts parts for stop_after_parts
        todo = [r for r in part if r["id"] not in done]
        if not todo:
            continue
        values = score_part(lm, settings, part, on_tokens)  # the whole part: the same batches every time
        new = pa.Table.from_pylist([v for v in values if v["sample_id"] not in done], schema=SIDE_SCHEMA)
        # Named by its samples and their content: a part recomputed after a kill (before its catalog
        # insert) replaces itself; new content never overwrites the scores of the old.
        name = hashlib.sha256("\n".join(f"{r['id']}:{hashes[r['id']]}" for r in todo).encode()).hexdigest()[:16]
        write_parquet_atomic(new, output / f"part-{name}.parquet")
        n = new.num_rows
        per_row = new.select(["sample_id", "metric", "value"]).append_column(
            "content_hash", pa.array([hashes[i] for i in new.column("sample_id").to_pylist()], pa.string()))
        catalog.add_score_rows(per_row, artifact_id=artifact_id, job=settings.job, model=lm.name,
                               revision=lm.revision, run_id=run_id, settings=settings_json)
        rows_written += n
        scored += len(todo)
        if bar:
            bar.advance(len(todo), f"{tokens / max(1e-9, time.time() - t0):,.0f} tok/s")
        if stop_after_parts is not None and k + 1 >= stop_after_parts:
            break
    if bar:
        bar.close()
    n_in = len(records) + len(bad_ids)
    rejects = pa.table({"stage": [label] * len(bad), "record_id": [b[0] for b in bad],
                        "reason": [b[1] for b in bad], "detail": [b[2] for b in bad],
                        "kind": ["rejected"] * len(bad)})
    catalog.record_results(run_id, stage_stats=[{
        "step": 0, "stage": label, "shape": "per-record", "in": n_in, "out": n_in - len(bad_ids),
        "rejected": len(bad_ids), "dropped": 0, "inputs_with_output": n_in - len(bad_ids),
        "seconds": round(time.time() - t0, 3)}], rejects=rejects, artifacts=[], lineage=[])
    return JobResult(scored, len(done), rows_written, tokens, time.time() - t0, output, len(bad))
