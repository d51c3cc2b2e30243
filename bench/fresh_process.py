"""Running one measurement in a fresh Python process: a benchmark contender must not inherit the
heap an earlier one churned (the tokenizer alone runs a tenth slower in such a process)."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
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
