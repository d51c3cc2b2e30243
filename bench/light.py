"""One light stage (a length filter) on every runner, beside datatrove's own
``ParquetReader -> LambdaFilter -> ParquetWriter`` on the same file, in the same run: throughput and
the driver's peak RSS, at N and 4N documents (each measurement in a fresh process).

    .venv/bin/python bench/light.py [--docs 200000]

Bounded memory means the 4N row's peak stays near the N row's (goal: at most 1.3x).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fresh_process import add_child_options, measure_in_fresh_process  # noqa: E402

PIPELINE = """
name: bench-length-filter
inputs:
  - path: {input}
read:
  shard_mb: {shard_mb}
stages:
  - stage: length_filter
    params: {{min_chars: 300}}
"""
CONTENDERS = [("longforge local, 1 process", "local", 1), ("longforge beam, 2 workers", "beam", 2),
              ("longforge datatrove, 1 worker", "datatrove", 1),
              ("datatrove ParquetReader -> LambdaFilter -> ParquetWriter", "native", 1)]


def measure(which: str, src: Path, work: Path) -> dict:
    import shutil

    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if which == "native":
        from datatrove.executor import LocalPipelineExecutor
        from datatrove.pipeline.filters import LambdaFilter
        from datatrove.pipeline.readers import ParquetReader
        from datatrove.pipeline.writers import ParquetWriter

        LocalPipelineExecutor(pipeline=[ParquetReader(str(src.parent), glob_pattern=src.name),
                                        LambdaFilter(lambda doc: len(doc.text) >= 300),
                                        ParquetWriter(str(work / "native"))],
                              tasks=1, workers=1, logging_dir=str(work / "logs")).run()
    else:
        from catalog import Catalog
        from pipelines.driver import run_pipeline
        from pipelines.engine.plan import build_plan
        from pipelines.engine.progress import Progress
        from pipelines.spec import load_pipeline

        runner, workers = which.split(":")
        size = src.stat().st_size
        pipeline = work / "p.yaml"
        pipeline.write_text(PIPELINE.format(input=src, shard_mb=max(0.05, round(size / 20 / (1 << 20), 3))))
        plan = build_plan(load_pipeline(pipeline), output=str(work / "out"))
        run_pipeline(plan, runner=runner, workers=int(workers), catalog=Catalog(str(work / "c.duckdb")),
                     progress=Progress(enabled=False))
    seconds = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)
    return {"seconds": seconds, "rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that across exec, so a
    child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=200_000)
    add_child_options(ap)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, Path(args.src), Path(args.work))))
        return
    from bench.engine import make_documents
    from pipelines.engine.progress import format_table

    root = Path(tempfile.mkdtemp(prefix="longforge-light-"))
    rows = []
    for n in (args.docs, 4 * args.docs):
        src = root / f"docs-{n}" / "docs.parquet"
        src.parent.mkdir(parents=True)
        n, size = make_documents(n, src)
        print(f"{n:,} documents, {size / 1e6:.1f} MB Parquet, {os.cpu_count()} cores", flush=True)
        for label, runner, workers in CONTENDERS:
            which = "native" if runner == "native" else f"{runner}:{workers}"
            r = measure_in_fresh_process(__file__, which, src, root / "work")
            rows.append((f"{label}, {n:,} docs", workers, round(n / r["seconds"]), round(r["rss_mb"])))
            print(f"  {rows[-1]}", flush=True)
    print()
    print(format_table(["what", "workers", "docs/s", "driver peak RSS MB"], rows))


if __name__ == "__main__":
    main()
