"""``longforge score JOB (--artifact NAME_OR_ID | --input PATH) --model M``: read the records, run
the job (:mod:`gpu_jobs.scoring`), and say where the scores are and how to join them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq

FIELDS = ("text", "prompt", "response", "context", "instruction")


class ScoreInputError(ValueError):
    pass


def read_records(path: str, columns: list[str], optional: tuple[str, ...] = ()) -> list[dict]:
    """Records of a Parquet / JSONL file, a folder of them, or a longforge output (its data/)."""
    from pipelines import storage
    from pipelines.storage.readers import check_input_file

    try:
        p = Path(storage.local_path(str(path))).expanduser()  # file:///abs/x names /abs/x
    except ValueError as e:
        raise ScoreInputError(str(e)) from None
    if p.is_dir():
        data = p / "data" if (p / "data").is_dir() else p
        parquet, jsonl = sorted(data.glob("*.parquet")), sorted(data.glob("*.jsonl")) + sorted(data.glob("*.jsonl.gz"))
        if parquet and jsonl:
            raise ScoreInputError(f"'{data}' holds both Parquet ({len(parquet)}) and JSONL ({len(jsonl)}) files; "
                                  "give one file, or a folder of one format")
        files = parquet or jsonl
    elif p.exists() or p.is_symlink():
        try:  # a pipe, FIFO or device is refused before it is opened (a FIFO would block)
            check_input_file(str(p), "parquet" if p.suffix == ".parquet" else "jsonl")
        except ValueError as e:
            raise ScoreInputError(f"{e.args[0]} -> {e.args[1]}") from None
        files = [p]
    else:
        raise ScoreInputError(f"input '{path}' does not exist")
    if not files:
        raise ScoreInputError(f"no .parquet or .jsonl files in '{path}'")
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f) if f.suffix == ".parquet" else pajson.read_json(f))
        except (pa.ArrowException, OSError) as e:
            raise ScoreInputError(f"'{f}' cannot be read ({type(e).__name__}: {str(e)[:200]}); "
                                  "re-export it or leave it out") from None
    table = pa.concat_tables(tables, promote_options="default")
    if table.num_rows == 0:
        raise ScoreInputError(f"'{path}' holds no records: nothing to score")
    columns = [c for c in columns if c in table.column_names or c not in optional]
    missing = [c for c in ["id", *columns] if c not in table.column_names]
    if missing:
        raise ScoreInputError(f"records in '{path}' lack {missing} (have {table.column_names}); "
                              "map fields with --field NAME=COLUMN")
    table = table.select(["id", *dict.fromkeys(columns)])
    ids = table.column("id")
    if len(set(ids.to_pylist())) != table.num_rows:
        raise ScoreInputError(f"record ids in '{path}' are not unique: scores are keyed by id")
    return table.sort_by([("id", "ascending")]).to_pylist()


def parse_rope(text: str):
    """``KIND:FACTOR[:TRAINED]`` -> a RoPE extension (ValueError naming the option when malformed)."""
    from gpu_jobs.lm import RopeExtension

    parts = text.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        return RopeExtension(parts[0], float(parts[1]), int(parts[2]) if len(parts) == 3 else None)
    except ValueError as e:
        raise ValueError(f"--rope {text!r}: expected KIND:FACTOR[:TRAINED] with KIND linear, dynamic or yarn and "
                         f"FACTOR above 1{': ' + str(e) if str(e) else ''}") from None


def score(args) -> int:
    from catalog import Catalog
    from gpu_jobs.lm import load_causal_lm
    from gpu_jobs.models import ModelNotAvailable
    from gpu_jobs.scoring import ScoreSettings
    from gpu_jobs.scoring_job import run_scoring
    from pipelines.driver import new_run_id
    from pipelines.engine.progress import Progress

    mapping = {}
    for item in args.field:
        name, _, column = item.partition("=")
        if name not in FIELDS or not column:
            print(f"error: --field {item!r}: expected NAME=COLUMN, NAME one of {', '.join(FIELDS)}", file=sys.stderr)
            return 2
        mapping[name] = column
    try:
        rope = parse_rope(args.rope) if args.rope else None
        settings = ScoreSettings(
            args.job, max_tokens=args.max_tokens, stride=args.stride, token_budget=args.token_budget,
            segment_tokens=args.segment_tokens, max_segments=args.max_segments, rope=rope,
            **{f"{k}_field": v for k, v in mapping.items()})
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    required, optional = settings.fields()
    catalog = Catalog(args.catalog)
    try:
        if args.artifact:
            artifact_id, path = catalog.find_artifact(args.artifact)
        else:
            artifact_id, path = None, args.input
        records = read_records(path, required + optional, optional=tuple(optional))
    except (KeyError, ScoreInputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.limit:
        records = records[:args.limit]
    name = f"{args.job}-{Path(args.model).name}-{settings.hash()[:8]}"
    beside_catalog = Path(os.path.dirname(os.path.abspath(catalog.path)))
    output = Path(args.output) if args.output else beside_catalog / "scores" / name
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not (output / "_job.json").exists())):
        print(f"error: --output '{output}' already holds files that are not a scoring job's side table -> "
              "give a new or empty folder", file=sys.stderr)
        return 2
    try:
        lm = load_causal_lm(args.model, device=args.device, rope=rope)
        settings.check_window(settings.max_tokens or lm.max_positions)
    except (ModelNotAvailable, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_id = new_run_id()
    catalog.start_run(run_id, pipeline=f"score:{args.job}", pipeline_file="", runner="score", workers=1,
                      spec_fingerprint=settings.hash(), seed=settings.seed,
                      params={"job": args.job, "model": args.model, "revision": lm.revision,
                              "settings": settings.identity(), "input": os.path.abspath(path),
                              "artifact_id": artifact_id},
                      code_version="", output_path=str(output))
    try:
        result = run_scoring(lm, settings, records, catalog=catalog, output=output, artifact_id=artifact_id,
                             run_id=run_id, part_size=args.part_size, progress=Progress(enabled=not args.quiet))
    except BaseException as e:
        from pipelines.engine.interrupts import as_interruption, ended_by_user

        status = "interrupted" if ended_by_user(e) else "failed"
        catalog.finish_run(run_id, status, f"{type(e).__name__}: {e}"[:2000])
        if as_interruption(e) is e:
            raise
        raise as_interruption(e) from e
    catalog.finish_run(run_id, "succeeded")
    print(f"{args.job} with {args.model} (revision {lm.revision}, {lm.device} {lm.dtype}): {result.scored} samples "
          f"scored, {result.skipped} already in the catalog, {result.rejected} rejected (catalog table 'rejects'), "
          f"{result.rows} score rows, "
          f"{result.tokens / max(result.seconds, 1e-9):,.0f} tokens/s")
    print(f"side table: {result.output}")
    print(f"catalog:    {catalog.path} (table scores, job = '{args.job}', model = '{args.model}')")
    return 0
