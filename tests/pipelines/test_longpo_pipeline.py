"""pipelines/longpo.yaml, as shipped, on the longest Paul Graham essays, through `longforge run`,
against the local OpenAI-compatible server in its context-echo mode (tests/fixtures/openai_server.py:
answers name how many words of context they were given; it stands in for pi_S so that a test can
tell which context each answer came from)."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq

from catalog import Catalog
from tests.conftest import REPO, run_cli
from tests.gpu_jobs.test_generate import _server


def _served(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as r:
        return json.loads(r.read())["served"]


def _data_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "data").glob("*.parquet"))}


def test_longpo_pairs_from_real_essays_direction_accounting_reruns_and_runners(tmp_path, corpora_dir):
    proc, port = _server("--echo")
    try:
        spec = (REPO / "pipelines" / "longpo.yaml").read_text().replace(
            "backend: local", f"backend: openai, base_url: 'http://127.0.0.1:{port}/v1', api_key_env: null, retries: 0")
        assert "backend: openai" in spec
        pipe = tmp_path / "longpo.yaml"
        pipe.write_text(spec)
        catalog = tmp_path / "c.duckdb"
        base = ["run", str(pipe), "--input", str(corpora_dir / "paul_graham"), "--catalog", str(catalog), "--quiet"]
        first = run_cli(*base, "--output", str(tmp_path / "a"))
        assert first.returncode == 0, first.stderr[-3000:]
        made = _served(port)
        again = run_cli(*base, "--output", str(tmp_path / "b"))
        assert again.returncode == 0, again.stderr[-3000:]
        assert _served(port) == made > 0  # the rerun's every call came from the catalog's cache
        # on Beam's and datatrove's workers, two each, over several shards: the same records
        pipe.write_text(spec + "\nread:\n  shard_mb: 0.05\n")
        for runner in ("beam", "datatrove"):
            other = run_cli(*base, "--output", str(tmp_path / runner), "--runner", runner, "--workers", "2")
            assert other.returncode == 0, other.stderr[-3000:]
    finally:
        proc.terminate()
        proc.wait()
    assert _data_bytes(tmp_path / "a") == _data_bytes(tmp_path / "b")  # same input, spec, seed: same bytes
    prints = {d: json.loads((tmp_path / d / ".longforge" / "run.json").read_text())["fingerprint"]
              for d in ("a", "beam", "datatrove")}
    assert len(set(prints.values())) == 1, prints

    rows = pq.read_table(str(tmp_path / "a" / "data")).to_pylist()
    assert rows and any(r["chunks_left_out"] > 0 for r in rows)  # the longest essay is over target_len
    for row in rows:
        long_words = len(row["long_context"].split())
        assert row["long_tokens"] + 384 <= 4096
        for k in range(row["n_turns"]):
            chunk = row["short_prompts"][k].rsplit("\n\n", 1)[0]
            assert chunk in row["long_context"]
            assert int(re.search(r"counted: (\d+)", row["chosens"][k]).group(1)) == len(chunk.split()) < long_words
            assert int(re.search(r"counted: (\d+)", row["rejecteds"][k]).group(1)) == long_words
        assert row["prompt"][0]["content"].endswith("\n\n" + row["questions"][0])

    cat = Catalog(str(catalog))
    run_id = cat.query("SELECT run_id FROM runs ORDER BY started_at LIMIT 1")[1][0][0]
    acc = cat.query(f"SELECT stage, records_in, records_out, records_dropped, reconciles FROM stage_accounting "
                    f"WHERE run_id = '{run_id}' ORDER BY step")[1]
    assert all(r[4] for r in acc)
    assert [r[0] for r in acc[-3:]] == ["longpo_pairs", "longpo_format", "longpo_reference"]
    assert all(r[2] == len(rows) for r in acc[-3:])
    for row in rows:  # the training rows of spec 3.8 / 3.10 beside every pair
        assert len(row["reference_chosen_logps"]) == len(row["ref_chosen_input_ids"]) == row["n_turns"]
        assert all(x < 0 for x in row["reference_chosen_logps"] + row["reference_rejected_logps"])
        assert len(row["chosen_input_ids"]) > max(len(x) for x in row["ref_chosen_input_ids"])
    m = dict(cat.query(f"SELECT name, value FROM metrics WHERE run_id = '{run_id}' AND stage = 'longpo_pairs'")[1])
    assert m["generations_made"] == made and m["turns"] == sum(r["n_turns"] for r in rows)
    assert cat.query("SELECT count(*) FROM generations")[1][0][0] == made
