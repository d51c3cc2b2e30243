"""The local runner's process pool starts its workers from a fork server (they never carry the
driver's memory). What that asks of a Python script that calls the engine, and what still works:
a script without a ``__main__`` guard is told what to add, and a stage defined where no process
can import it again (``python -c``, a notebook cell) runs on forked workers."""

from __future__ import annotations

import shutil
import subprocess
import sys

from tests.conftest import REPO, write_jsonl, write_pipeline

_RUN = """
from catalog import Catalog
from pipelines.driver import run_pipeline
from pipelines.engine.plan import build_plan
from pipelines.engine.progress import Progress
from pipelines.spec import load_pipeline
plan = build_plan(load_pipeline(SPEC), inputs=[SRC], output=OUT)
result = run_pipeline(plan, workers=2, catalog=Catalog(CAT), progress=Progress(enabled=False))
print("records", result.n_records, len(plan.shards))
"""


def _inputs(real_docs, tmp_path, stage: str):
    docs = [{"id": d["id"], "text": d["text"][:1500]} for d in real_docs[:24]]
    src = write_jsonl(tmp_path / "in.jsonl", docs)
    spec = write_pipeline(tmp_path / "p.yaml", f"name: pool\nread:\n  shard_mb: 0.01\nstages:\n  - stage: {stage}\n")
    names = {"SPEC": str(spec), "SRC": str(src), "OUT": str(tmp_path / "out"), "CAT": str(tmp_path / "c.duckdb")}
    return "".join(f"{k} = {v!r}\n" for k, v in names.items()), docs


def test_a_script_without_a_main_guard_is_told_to_add_one(real_docs, tmp_path):
    head, _ = _inputs(real_docs, tmp_path, "normalize")
    script = tmp_path / "unguarded.py"
    script.write_text(head + _RUN)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode != 0
    assert 'if __name__ == "__main__":' in done.stderr, done.stderr[-3000:]
    guarded = tmp_path / "guarded.py"
    guarded.write_text(head + "if __name__ == '__main__':\n" + "".join(f"    {line}\n" for line in _RUN.splitlines()))
    shutil.rmtree(tmp_path / "out", ignore_errors=True)  # what the failed run left
    done = subprocess.run([sys.executable, str(guarded)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    n, shards = map(int, done.stdout.split()[-2:])
    assert n == 24 and shards > 1


def test_a_stage_defined_in_python_c_runs_on_forked_workers(real_docs, tmp_path):
    head, docs = _inputs(real_docs, tmp_path, "shout_in_main")
    stage = """
from schemas import TEXT_RECORD
from stages import register
from stages.base import RecordStage


@register
class Shout(RecordStage):
    name = "shout_in_main"
    input_schema = TEXT_RECORD

    def process(self, record):
        yield {**record, "text": record["text"].upper()}
"""
    done = subprocess.run([sys.executable, "-c", head + stage + _RUN], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    n, shards = map(int, done.stdout.split()[-2:])
    assert n == 24 and shards > 1
    import pyarrow.parquet as pq

    texts = sorted(pq.read_table(str(tmp_path / "out" / "data")).column("text").to_pylist())
    assert texts == sorted(d["text"].upper() for d in docs)
