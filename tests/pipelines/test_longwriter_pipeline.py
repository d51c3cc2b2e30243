"""pipelines/longwriter.yaml against the local OpenAI-compatible server (tests/fixtures/openai_server.py),
whose replies to instructions marked `[[plan:N]]` are scripted plans and sections (SmolLM2 cannot
write a usable plan): a run SIGKILLed while writing, then rerun, asks for no plan or section that
was finished before the kill, and gives the output of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request

import pyarrow.parquet as pq

from catalog import Catalog
from tests.conftest import LONGFORGE, REPO, run_cli, write_jsonl
from tests.gpu_jobs.test_generate import _server

N_DOCS, STEPS = 3, 4  # each instruction: one plan call and four section calls


def _stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as r:
        return json.loads(r.read())


def _kept(out) -> set[str]:
    """Prompt hashes of the generations a run's cache holds (complete lines only)."""
    kept = set()
    for f in (out / ".longforge").rglob("gen-*.jsonl"):
        kept |= {json.loads(line)["prompt_hash"] for line in f.read_text().splitlines(keepends=True)
                 if line.endswith("\n")}
    return kept


def _pipeline(tmp_path, port: int):
    spec = (REPO / "pipelines" / "longwriter.yaml").read_text().replace(
        "backend: local", f"backend: openai, base_url: 'http://127.0.0.1:{port}/v1', api_key_env: null, retries: 0, "
        "batch_records: 1")
    assert "backend: openai" in spec
    pipe = tmp_path / "longwriter.yaml"
    pipe.write_text(spec)
    inp = write_jsonl(tmp_path / "instructions.jsonl", [
        {"id": f"i{k}", "text": f"[[plan:{STEPS}]] Write an essay about river number {k}.", "language": "en"}
        for k in range(N_DOCS)])
    return pipe, inp


def test_a_run_killed_while_writing_pays_for_no_finished_call_again(tmp_path):
    proc, port = _server("--delay", "0.3")
    try:
        pipe, inp = _pipeline(tmp_path, port)
        clean = run_cli("run", str(pipe), "--input", str(inp), "--output", str(tmp_path / "clean"), "--catalog",
                        str(tmp_path / "clean.duckdb"), "--quiet")
        assert clean.returncode == 0, clean.stderr[-3000:]
        total = N_DOCS * (1 + STEPS)
        assert _stats(port)["served"] == total
        rows = pq.read_table(str(tmp_path / "clean" / "data")).to_pylist()
        assert len(rows) == N_DOCS and all(r["n_steps"] == STEPS for r in rows)
        # the same run, killed once seven calls are answered (mid-way through the second instruction)
        args = [*LONGFORGE, "run", str(pipe), "--input", str(inp), "--output", str(tmp_path / "killed"),
                "--catalog", str(tmp_path / "k.duckdb"), "--quiet"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        before = _stats(port)["served"]
        run = subprocess.Popen(args, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        # killed once seven answers are kept in the run's generation cache (not merely served: under
        # load the client may not have written the last one yet)
        while (len(_kept(tmp_path / "killed")) < 7 and time.time() < deadline and run.poll() is None):
            time.sleep(0.05)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        assert _stats(port)["served"] >= before + 7
        cached = _kept(tmp_path / "killed")
        assert len(cached) >= 7
        at_rerun = len(_stats(port)["prompts"])
        again = run_cli(*args[len(LONGFORGE):])
        assert again.returncode == 0, again.stderr[-3000:]
        asked_again = set(_stats(port)["prompts"][at_rerun:])
        assert not asked_again & cached  # no finished plan or section generated twice
    finally:
        proc.terminate()
        proc.wait()
    fp = [json.loads((tmp_path / d / ".longforge" / "run.json").read_text())["fingerprint"]
          for d in ("clean", "killed")]
    assert fp[0] == fp[1]
    m = dict(Catalog(str(tmp_path / "k.duckdb")).query(
        "SELECT m.name, m.value FROM metrics m JOIN runs r USING (run_id) WHERE m.stage = 'agent_write' "
        "ORDER BY r.started_at")[1])
    # the output's instructions needed `total` calls: each one made once (by the killed run or the rerun)
    # or answered by the cache (those the killed run finished inside an unfinished batch)
    assert m["generations_made"] + m["generations_cached"] == total and m["generations_cached"] >= 1
    assert len(asked_again) == total - len(cached)
