"""Dataset Decomposition throughput: tokens per second of the whole pipeline against the floor.

    .venv/bin/python bench/decomposition.py [--docs 20000] [--chars 4000] [--repeat 2]

Documents are windows of real text (Paul Graham essays, KJV chapters, Python docs). In one run:
the floor, a raw ``encode_batch`` of the same texts with the same ``tokenizers`` tokenizer;
datatrove's DocumentTokenizer writing its token files; and longforge's decomposition pipeline end to
end (read, tokenise with EOS, decompose into buckets, write Parquet, memmap token files, schedule,
plot, catalog). The tokenizer runs on one thread everywhere; the pipeline cuts and writes one batch
while its tokenizer encodes the next (the Rust tokenizer releases the GIL), so it is measured as a
user runs it (two cores here) and pinned to one core (``sched_setaffinity``), where that overlap
is lost.

Each contender runs in a fresh process, ``--repeat`` times in turn, and the best time counts: the
tokenizer alone runs a tenth or more slower in a process whose heap an earlier contender has
churned, which would otherwise favour whichever runs first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fresh_process import add_child_options, measure_in_fresh_process  # noqa: E402
from catalog import Catalog  # noqa: E402
from gpu_jobs.models import load_tokenizer, tokenizer_path  # noqa: E402
from pipelines.commands import corpora  # noqa: E402
from pipelines.driver import run_pipeline  # noqa: E402
from pipelines.engine.plan import build_plan  # noqa: E402
from pipelines.engine.progress import Progress, format_table  # noqa: E402
from pipelines.spec import load_pipeline  # noqa: E402

PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "decomposition.yaml"


def make_documents(n: int, chars: int, path: Path) -> list[str]:
    texts = [d["text"] for name in ("paul_graham", "kjv_books", "python_docs") for d in corpora.CORPORA[name].build()]
    out, ids, k = [], [], 0
    while len(out) < n:
        for t_i, text in enumerate(texts):
            if len(text) <= chars:
                continue
            start = (k * 211) % (len(text) - chars)
            out.append(text[start:start + chars])
            ids.append(f"w{k:04d}-{t_i:04d}-{start}")
            if len(out) >= n:
                break
        k += 1
    pq.write_table(pa.table({"id": ids, "text": out}), path, row_group_size=max(1, n // 10))
    return out


def floor(texts: list[str]) -> tuple[int, float]:
    tok = load_tokenizer("smollm2")
    t0 = time.perf_counter()
    n = 0
    for i in range(0, len(texts), 1024):
        n += sum(len(e.ids) + 1 for e in tok.encode_batch_fast(texts[i:i + 1024], add_special_tokens=False))
    return n, time.perf_counter() - t0


def datatrove_tokenizer(src: Path, work: Path) -> float:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.tokens import DocumentTokenizer

    t0 = time.perf_counter()
    LocalPipelineExecutor(
        pipeline=[ParquetReader(str(src.parent), glob_pattern=src.name),
                  DocumentTokenizer(str(work / "dt-tokens"), tokenizer_name_or_path=str(tokenizer_path("smollm2")),
                                    eos_token="<|endoftext|>", shuffle_documents=False)],
        tasks=1, workers=1, logging_dir=str(work / "dt-logs"), skip_completed=False,
    ).run()
    return time.perf_counter() - t0


def pipeline(src: Path, work: Path) -> tuple[int, float]:
    t0 = time.perf_counter()  # reading and checking the pipeline file counts too
    plan = build_plan(load_pipeline(PIPELINE), inputs=[str(src)], output=str(work / "dd"))
    result = run_pipeline(plan, catalog=Catalog(str(work / "bench.duckdb")), progress=Progress(enabled=False))
    seconds = time.perf_counter() - t0
    return int(result.metrics["decompose"]["tokens_in"]), seconds


CONTENDERS = ("floor", "datatrove", "pipeline", "pipeline-1core")


def measure(which: str, src: Path, work: Path) -> tuple[int, float]:
    """(tokens, seconds) of one contender, in this process."""
    work.mkdir(parents=True, exist_ok=True)
    if which == "floor":
        return floor(pq.read_table(src, columns=["text"]).column("text").to_pylist())
    if which == "datatrove":
        return -1, datatrove_tokenizer(src, work)
    if which == "pipeline-1core":
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    return pipeline(src, work)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--chars", type=int, default=4000)
    ap.add_argument("--repeat", type=int, default=2, help="runs per contender, in turn; the best counts")
    add_child_options(ap, choices=CONTENDERS)  # a child process measures one contender
    args = ap.parse_args()
    if args.measure:
        tokens, seconds = measure(args.measure, Path(args.src), Path(args.work))
        print(json.dumps({"tokens": tokens, "seconds": seconds}))
        return
    work = Path(tempfile.mkdtemp(prefix="longforge-dd-bench-"))
    try:
        src = work / "docs.parquet"
        texts = make_documents(args.docs, args.chars, src)
        best: dict[str, float] = {}
        tokens: dict[str, int] = {}
        failed: dict[str, str] = {}
        for r in range(args.repeat):
            for which in CONTENDERS:
                try:
                    res = measure_in_fresh_process(__file__, which, src, work / f"{which}-{r}")
                    n, seconds = res["tokens"], res["seconds"]
                except subprocess.CalledProcessError as e:  # report, do not hide, a failing contender
                    failed[which] = (e.stderr or "").strip().splitlines()[-1:][0] if e.stderr else "failed"
                    continue
                tokens[which] = n
                best[which] = min(best.get(which, float("inf")), seconds)
        n_floor, t_floor = tokens["floor"], best["floor"]
        labels = {"floor": "floor: tokenizers encode_batch (+EOS)", "datatrove": "datatrove DocumentTokenizer",
                  "pipeline": "longforge decomposition.yaml, end to end",
                  "pipeline-1core": "the same, pinned to one core"}
        rows = []
        for which in CONTENDERS:
            if which in failed and which not in best:
                rows.append((f"{labels[which]}: failed ({failed[which][:60]})", 0, 0, 0, 0))
                continue
            n = n_floor if which == "datatrove" else tokens[which]
            if which != "datatrove" and n != n_floor:
                raise SystemExit(f"{which} counted {n:,} tokens, the floor {n_floor:,}: not the same work")
            t = best[which]
            rows.append((labels[which], n, round(t, 2), round(n / t), round((n / t) / (n_floor / t_floor), 3)))
        print(f"{len(texts):,} documents of {args.chars} characters, SmolLM2 tokenizer on one thread, "
              f"{len(os.sched_getaffinity(0))} cores; best of {args.repeat} runs, each in a fresh process; "
              "goal: end to end >= 0.95 x floor")
        print(format_table(["what", "tokens", "seconds", "tokens/s", "x floor"], rows))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
