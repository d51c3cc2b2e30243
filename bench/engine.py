"""Engine throughput: records per second per core, each runner against a plain pyarrow floor.

    .venv/bin/python bench/engine.py [--docs 100000] [--repeat 1]
    .venv/bin/python bench/engine.py --memory [--docs 200000]
    .venv/bin/python bench/engine.py --groups [--docs 100000]

``--groups`` gives the group-step rows: UtK (``pipelines/utk.yaml``, one stream, as the paper) and
Dataset Decomposition (``pipelines/decomposition.yaml``) at N and 4N documents on the local runner
with two worker processes, each run in a fresh process: the driver's peak RSS and the largest peak
RSS of a worker (from the tasks' markers), goal: 4N at most 1.3x N for every process.

``--memory`` gives the bounded-memory rows instead: the driver's peak RSS running
``pipelines/documents.yaml`` at N and 4N documents (goal: 4N at most 1.3x N), each in a fresh
process, then one light stage (a length filter) on every runner beside datatrove's own
``ParquetReader -> LambdaFilter -> ParquetWriter`` on the same file (bench/light.py).

Documents are windows of real text (Paul Graham essays, KJV chapters, Python's reference topics),
scaled to ``--docs`` records. The floor is a plain pyarrow read + write of the same Parquet file;
every other row runs ``normalize + tokenize (SmolLM2)`` through longforge on one runner, end to
end (planning, shards, markers, publishing, fingerprint, catalog). Figures are printed as a ratio
to the floor measured in the same run, since these machines are noisy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# One thread per process, so that "per core" means what it says (the tokenizer would otherwise
# encode batches on every core even in a one-process run).
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from catalog import Catalog  # noqa: E402
from pipelines.commands import corpora  # noqa: E402
from pipelines.driver import run_pipeline  # noqa: E402
from pipelines.engine.plan import build_plan  # noqa: E402
from pipelines.engine.progress import Progress, format_table  # noqa: E402
from pipelines.spec import load_pipeline  # noqa: E402

PIPELINE = """
name: bench-normalize-tokenize
inputs:
  - path: {input}
read:
  shard_mb: {shard_mb}
output:
  records_per_file: 1000000
stages:
  - stage: normalize
  - stage: tokenize
    params: {{tokenizer: smollm2}}
"""


INPUT_ROW_GROUP = 5_000


def make_documents(n: int, path: Path, width: int = 500) -> tuple[int, int]:
    """``n`` windows of about ``width`` characters, sliding over the real texts (distinct ids and offsets)."""
    names = ("paul_graham", "kjv_chapters", "python_docs")
    texts = [d["text"] for name in names for d in corpora.CORPORA[name].build()]
    ids, out, k, step = [], [], 0, 97
    while len(out) < n:
        for t_i, text in enumerate(texts):
            start = (k * step) % max(1, len(text) - width)
            out.append(text[start:start + width])
            ids.append(f"w{k:04d}-{t_i:04d}-{start}")
            if len(out) >= n:
                break
        k += 1
    table = pa.table({"id": ids, "text": out})
    # Row groups of a fixed size, as a real corpus has: a shard is made of whole row groups, so row
    # groups that grew with n (they were n / 20) made 4N's shards larger than N's.
    pq.write_table(table, path, row_group_size=INPUT_ROW_GROUP)
    return table.num_rows, path.stat().st_size


def floor(path: Path, work: Path) -> float:
    t0 = time.perf_counter()
    t = pq.read_table(path)
    pq.write_table(t, work / "copy.parquet")
    return t.num_rows / (time.perf_counter() - t0)


def stages_alone(path: Path) -> float:
    """The same two stages in a plain loop over batches: what the work costs without any engine."""
    from stages import get_stage

    normalize, tokenize = get_stage("normalize")(), get_stage("tokenize")()
    normalize.setup()
    tokenize.setup()
    t0 = time.perf_counter()
    rows = pq.read_table(path).to_pylist()
    n = 0
    for i in range(0, len(rows), 256):
        batch = [o[0] for o in normalize.process_batch(rows[i:i + 256])]
        n += len(tokenize.process_batch(batch))
    return n / (time.perf_counter() - t0)


def run_one(pipeline: Path, work: Path, runner: str, workers: int) -> float:
    out = work / f"out-{runner}-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    plan = build_plan(load_pipeline(pipeline), output=str(out))
    t0 = time.perf_counter()
    result = run_pipeline(plan, runner=runner, workers=workers, catalog=Catalog(str(work / "bench.duckdb")),
                          progress=Progress(enabled=False))
    return result.n_records / (time.perf_counter() - t0)


def measure_documents(src: Path, work: Path) -> dict:
    """pipelines/documents.yaml over ``src`` in this (fresh) process: seconds and peak RSS."""
    from bench.light import peak_rss_mb

    work.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[1]
    plan = build_plan(load_pipeline(repo / "pipelines" / "documents.yaml"), inputs=[str(src)],
                      output=str(work / "out"))
    t0 = time.perf_counter()
    result = run_pipeline(plan, catalog=Catalog(str(work / "c.duckdb")), progress=Progress(enabled=False))
    return {"seconds": time.perf_counter() - t0, "rss_mb": peak_rss_mb(), "records": result.n_records,
            "shards": len(plan.shards)}


def measure_group_pipeline(name: str, src: Path, work: Path) -> dict:
    """``pipelines/<name>.yaml`` over ``src`` in this (fresh) process, two worker processes:
    seconds, the driver's peak RSS and the workers' (their tasks' markers say it)."""
    import json

    from bench.light import peak_rss_mb

    work.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[1]
    spec = work / f"{name}.yaml"  # shards of 16 MB: every size runs its tasks in the two worker processes
    spec.write_text((repo / "pipelines" / f"{name}.yaml").read_text() + f"\nread:\n  shard_mb: {GROUP_SHARD_MB}\n")
    plan = build_plan(load_pipeline(spec), inputs=[str(src)], output=str(work / "out"))
    t0 = time.perf_counter()
    result = run_pipeline(plan, workers=2, catalog=Catalog(str(work / "c.duckdb")),
                          progress=Progress(enabled=False))
    seconds = time.perf_counter() - t0
    markers = [json.loads(m.read_text()) for m in (work / "out" / ".longforge" / "work").glob("*/shard-*.done.json")]
    return {"seconds": seconds, "driver_mb": peak_rss_mb(), "records": result.n_records, "shards": len(plan.shards),
            "worker_mb": max((m.get("peak_rss_mb") or 0) for m in markers) if markers else 0}


GROUP_SHARD_MB = 16
#: Characters per document: UtK's are short; decomposition's must reach its smallest bucket (256 tokens).
GROUP_DOC_CHARS = {"utk": 500, "decomposition": 1500}


def group_rows(docs: int, names: tuple[str, ...] = ("utk", "decomposition")) -> None:
    from bench.fresh_process import measure_in_fresh_process

    root = Path(tempfile.mkdtemp(prefix="longforge-groups-"))
    rows, peaks = [], {}
    try:
        for name in names:
            for n in (docs, 4 * docs):
                src = root / f"docs-{n}-{GROUP_DOC_CHARS[name]}.parquet"
                if not src.exists():
                    make_documents(n, src, GROUP_DOC_CHARS[name])
                r = measure_in_fresh_process(__file__, f"group:{name}", src, root / "work")
                rows.append((f"{name}.yaml, {n:,} docs ({r['shards']} shards) -> {r['records']:,} records",
                             round(r["seconds"], 1), round(r["driver_mb"]), round(r["worker_mb"])))
                peaks.setdefault(name, []).append((r["driver_mb"], r["worker_mb"]))
                print(f"  {rows[-1]}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(format_table(["what", "seconds", "driver peak RSS MB", "worker peak RSS MB"], rows))
    for name, ((d1, w1), (d4, w4)) in peaks.items():
        print(f"{name}: 4N / N peak RSS: driver {d4 / d1:.2f}, worker {w4 / max(w1, 1):.2f} (goal: at most 1.3)")


def memory_rows(docs: int) -> None:
    from bench.fresh_process import measure_in_fresh_process

    root = Path(tempfile.mkdtemp(prefix="longforge-memory-"))
    rows = []
    try:
        for n in (docs, 4 * docs):
            src = root / f"docs-{n}.parquet"
            n, size = make_documents(n, src)
            r = measure_in_fresh_process(__file__, "documents", src, root / "work")
            label = f"documents.yaml, {n:,} docs ({size / 1e6:.0f} MB, {r['shards']} shards)"
            rows.append((label, round(n / r["seconds"]), round(r["rss_mb"])))
            print(f"  {rows[-1]}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(format_table(["what", "docs/s", "driver peak RSS MB"], rows))
    print(f"4N / N peak RSS: {rows[1][2] / rows[0][2]:.2f} (goal: at most 1.3)\n", flush=True)
    import subprocess

    subprocess.run([sys.executable, str(Path(__file__).with_name("light.py")), "--docs", str(docs)], check=True)


def main() -> None:
    from bench.fresh_process import add_child_options

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=1, help="take the best of N runs of each row")
    ap.add_argument("--memory", action="store_true", help="driver peak RSS at N and 4N (see above)")
    ap.add_argument("--groups", action="store_true", help="UtK and decomposition peak RSS at N and 4N (see above)")
    ap.add_argument("--only", choices=["utk", "decomposition"], help="with --groups: one of the two pipelines")
    add_child_options(ap)
    args = ap.parse_args()
    if args.measure:
        import json

        if args.measure.startswith("group:"):
            print(json.dumps(measure_group_pipeline(args.measure.split(":", 1)[1], Path(args.src), Path(args.work))))
        else:
            print(json.dumps(measure_documents(Path(args.src), Path(args.work))))
        return
    if args.groups:
        group_rows(args.docs, (args.only,) if args.only else ("utk", "decomposition"))
        return
    if args.memory:
        memory_rows(args.docs)
        return
    work = Path(tempfile.mkdtemp(prefix="longforge-bench-"))
    try:
        src = work / "docs.parquet"
        n, size = make_documents(args.docs, src)
        # Ten shards, so that two workers always have work.
        pipeline = work / "bench.yaml"
        pipeline.write_text(PIPELINE.format(input=src, shard_mb=round(size / 10 / (1 << 20), 3)))
        print(f"{n:,} documents, {size / 1e6:.1f} MB Parquet, {os.cpu_count()} cores", flush=True)
        rows = []
        base = max(floor(src, work) for _ in range(max(1, args.repeat)))
        rows.append(("floor: pyarrow read + write", 1, base, base, 1.0))
        alone = max(stages_alone(src) for _ in range(max(1, args.repeat)))
        rows.append(("normalize + tokenize in a plain loop, no engine", 1, alone, alone, alone / base))
        for label, runner, workers in [
            ("local, 1 process", "local", 1),
            ("local, 2 processes", "local", 2),
            ("beam FnApiRunner in-process", "beam", 1),
            ("beam multi_processing, 2 workers", "beam", 2),
            ("datatrove LocalPipelineExecutor, 2 workers", "datatrove", 2),
        ]:
            rate = max(run_one(pipeline, work, runner, workers) for _ in range(max(1, args.repeat)))
            per_core = rate / workers
            rows.append((f"normalize + tokenize: {label}", workers, rate, per_core, per_core / base))
            print(f"  {label}: {rate:,.0f} docs/s", flush=True)
        print()
        print(format_table(["what", "cores", "docs/s", "docs/s/core", "x floor"],
                           [(w, c, round(r), round(pc), round(x, 4)) for w, c, r, pc, x in rows]))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
