"""The small commands: push, report, corpus, select, models, catalog (each a thin layer over the
module that does the work), and how query results are rendered."""

from __future__ import annotations

import csv
import io
import json
import sys

from pipelines.commands.parser import UsageError


def push(args) -> int:
    from catalog import Catalog
    from pipelines.commands.hub_push import PushError, push

    catalog = Catalog(args.catalog)
    try:
        done = push(catalog, args.artifact, args.repo, private=args.private, revision=args.revision,
                    config=args.config, progress=lambda m: print(m, file=sys.stderr))
    except PushError as e:
        print(f"push failed: {e}", file=sys.stderr)
        return 1
    print(f"pushed    {done.url} ({done.revision} @ {done.commit[:12] or '?'})")
    print(f"configs   {', '.join(done.configs)}")
    print(f"files     {done.files} ({done.n_bytes:,} bytes)")
    return 0


def report(args) -> int:
    from pathlib import Path

    from catalog import Catalog
    from pipelines.commands.report import ReportError, write_report

    catalog = Catalog(args.catalog)
    run_id = args.run_id
    try:
        if run_id == "latest":
            rows = catalog.query("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1")[1]
            if not rows:
                raise ReportError(f"no runs in {catalog.path}")
            run_id = rows[0][0]
        path = write_report(catalog, run_id, Path(args.output or f"report-{run_id}.html"))
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{path} (open it in a browser; the plots are inside the page)")
    return 0


def corpus(args) -> int:
    from pipelines.commands import corpora

    if args.corpus_command == "list":
        rows = [(c.name, c.language, c.license, c.description) for c in corpora.CORPORA.values()]
        from pipelines.engine.progress import format_table

        print(format_table(["name", "language", "license", "description"], rows))
        return 0
    if args.corpus_command == "fetch":
        for name in args.name:
            if name not in corpora.PACKAGES:
                from pipelines.spec import did_you_mean

                raise UsageError(f"unknown package '{name}': {did_you_mean(name, corpora.PACKAGES)}")
        for line in corpora.fetch_all(args.name or list(corpora.PACKAGES)):
            print(line)
        return 0
    for name in args.name:
        if name not in corpora.CORPORA:
            from pipelines.spec import did_you_mean

            raise UsageError(f"unknown corpus '{name}': {did_you_mean(name, corpora.CORPORA)}")
    if args.output and len(args.name) > 1:
        raise UsageError("--output names the folder of one corpus: build several without it (out/corpora/NAME)")
    failed = 0
    for name, result in corpora.build_all(args.name, args.output):
        if isinstance(result, corpora.CorpusNotAvailable):
            print(f"error: {result}", file=sys.stderr)
            failed = 1
        else:
            path, n = result
            print(f"{name}: {n:,} documents -> {path}")
    return failed


def select(args) -> int:
    from pathlib import Path

    from schemas.files import write_parquet_atomic, write_text_atomic
    from stages.gateau.core import SelectOptions
    from stages.gateau.stages import reselect

    if not 0 <= args.alpha <= 1 or not 0 < args.ratio <= 1:
        raise UsageError("--alpha must be in [0, 1] and --ratio in (0, 1]")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output '{out}' is a file; give a new or empty folder")
    if out.exists() and any(out.iterdir()) and not (out / "selection.json").exists():
        raise UsageError(f"--output '{out}' already holds files that are not a selection; "
                         "give a new or empty folder")
    options = SelectOptions(args.alpha, args.ratio, args.ppl_transform, args.pool_norm, args.importance,
                            args.cam_transform, args.no_segments, args.term_scale)
    try:
        scores, selected = reselect(args.gateau_output, options)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from e
    write_parquet_atomic(scores, out / "gateau_scores" / "data" / "train-00000-of-00001.parquet")
    write_parquet_atomic(selected, out / "data" / "train-00000-of-00001.parquet")
    lines = [json.dumps({"id": r["id"], "messages": r["messages"], "length": r["length"], "score": r["score"],
                         "rank": r["rank"]}, ensure_ascii=False) for r in selected.to_pylist()]
    write_text_atomic("\n".join(lines) + ("\n" if lines else ""), out / "selected.jsonl")
    meta = json.loads(scores.schema.metadata[b"longforge.gateau"])
    write_text_atomic(json.dumps(meta, indent=2, sort_keys=True) + "\n", out / "selection.json")
    spreads = meta["spreads"]
    print(f"{selected.num_rows} of {scores.num_rows} samples selected (alpha {args.alpha}, ratio {args.ratio}, "
          f"{args.pool_norm}; spread (std) HMG {spreads['hmg_std']:.3g}, CAM {spreads['cam_std']:.3g}) -> {out}")
    return 0


def models(args) -> int:
    from gpu_jobs import models

    if args.models_command == "install":
        from gpu_jobs.lm import install_smollm2

        print(f"smollm2 tokenizer: {models.install_smollm2_tokenizer()}")
        if not args.tokenizers:
            print(f"smollm2-135m (HF folder for scoring): {install_smollm2()}")
    for name in models.TOKENIZER_NAMES:
        try:
            print(f"tokenizer {name:<8} {models.tokenizer_path(name)}")
        except models.ModelNotAvailable as e:
            print(f"tokenizer {name:<8} missing: {e}")
    return 0


QUERIES = {
    "runs": "SELECT * FROM run_summary ORDER BY started_at DESC",
    "artifacts": "SELECT artifact_id, run_id, name, kind, n_records, fingerprint, schema_name, path "
    "FROM artifacts ORDER BY created_at DESC",
    "summary": "SELECT * FROM run_summary ORDER BY started_at DESC LIMIT 10",
}


def catalog(args) -> int:
    from catalog import Catalog, QueryRefused

    cat = Catalog(args.catalog)
    try:
        if args.catalog_command == "show":
            return _show_run(cat, args.run_id)
        sql = args.sql if args.catalog_command == "query" else QUERIES[args.catalog_command]
        columns, rows = cat.query(sql, files=args.catalog_command == "query")
    except (FileNotFoundError, QueryRefused) as e:
        raise UsageError(str(e)) from None
    except Exception as e:  # duckdb errors: bad SQL is a usage error
        if type(e).__module__.startswith("duckdb") or type(e).__module__.startswith("_duckdb"):
            raise UsageError(f"query failed: {e}") from None
        raise
    print(render(columns, rows, args.format))
    return 0


def _show_run(cat, run_id: str) -> int:
    columns, rows = cat.query("SELECT * FROM run_summary WHERE run_id = ?", [run_id])
    if not rows:
        raise UsageError(f"no run '{run_id}' in {cat.path} (see `longforge catalog runs`)")
    print(render(columns, rows, "table"))
    print()
    columns, rows = cat.query(
        "SELECT step, stage, records_in, records_out, records_rejected, records_dropped, round(seconds, 3) "
        "AS seconds FROM stage_stats WHERE run_id = ? ORDER BY step, rowid", [run_id])
    print(render(columns, rows, "table"))
    print()
    columns, rows = cat.query(
        "SELECT stage, kind, reason, n FROM drops_by_reason WHERE run_id = ? ORDER BY n DESC", [run_id])
    if rows:
        print(render(columns, rows, "table"))
        print()
    columns, rows = cat.query(
        "SELECT kind, name, n_records, fingerprint, path FROM artifacts WHERE run_id = ?", [run_id])
    print(render(columns, rows, "table"))
    return 0


def render(columns: list[str], rows: list[tuple], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([dict(zip(columns, r, strict=True)) for r in rows], default=str, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        w.writerows(rows)
        return buf.getvalue().rstrip("\n")
    from pipelines.engine.progress import format_table

    return format_table(columns, rows)

