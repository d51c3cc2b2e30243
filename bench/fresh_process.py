"""Running one measurement in a fresh Python process: a benchmark contender must not inherit the
heap an earlier one churned (the tokenizer alone runs a tenth slower in such a process)."""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path


def add_child_options(ap: argparse.ArgumentParser, **measure) -> None:
    """The hidden options a child process is started with: --measure (what), --src, --work."""
    ap.add_argument("--measure", help=argparse.SUPPRESS, **measure)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)


def measure_in_fresh_process(script: str, which, src: Path, work: Path, *extra: str) -> dict:
    """Run ``script --measure which --src src --work work *extra``; its last stdout line is JSON."""
    out = subprocess.run([sys.executable, script, "--measure", str(which), "--src", str(src), "--work", str(work),
                          *extra], check=True, capture_output=True, text=True).stdout
    shutil.rmtree(work, ignore_errors=True)
    return json.loads(out.strip().splitlines()[-1])


def cpu_and_wall(cmd: list[str], cwd: Path | None = None) -> tuple[float, float, str]:
    """CPU seconds of ``cmd`` and of every process it waited for (espeak-ng, sox, workers), its wall
    seconds and its stdout; a failure stops the benchmark with the command's stderr."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall, done.stdout
