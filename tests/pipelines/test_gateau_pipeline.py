"""pipelines/gateau-smollm2.yaml (the offline stand-in of pipelines/gateau.yaml) with the real
SmolLM2 on samples built from real essays: the same context asked for a sentence near its start
(outside the short model's 256-token window) or near its end (inside it). Early-dependence samples
must rank higher on average; re-selection must not touch a model."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from catalog import Catalog
from stages.gateau import core
from tests.conftest import REPO, run_cli, write_jsonl
from tests.fixtures.gateau_samples import early_late_samples


@pytest.fixture(scope="module")
def samples(real_docs):
    """Six essays, each a ~2,600-character context asked about an early and about a late sentence."""
    essays = [d for d in sorted(real_docs, key=lambda d: d["id"]) if d["source"] == "paul_graham"]
    rows = early_late_samples(essays, 12)
    assert len(rows) == 12
    return rows


@pytest.fixture(scope="module")
def gateau_run(samples, tmp_path_factory):
    base = tmp_path_factory.mktemp("gateau")
    inp = write_jsonl(base / "long_sft.jsonl", samples)
    r = run_cli("run", str(REPO / "pipelines" / "gateau-smollm2.yaml"), "--input", str(inp), "--output",
                str(base / "out"), "--catalog", str(base / "c.duckdb"), "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    return base


def test_early_dependence_ranks_higher_with_smollm2(gateau_run):
    t = pq.read_table(str(gateau_run / "out" / "gateau_scores")).to_pylist()
    assert len(t) == 12 and all(len(r["seg_ppl"]) == len(r["seg_attn"]) > 2 for r in t)
    early = [r["rank"] for r in t if r["id"].startswith("early")]
    late = [r["rank"] for r in t if r["id"].startswith("late")]
    assert np.mean(early) < np.mean(late)
    hmg_early = [r["hmg_raw"] for r in t if r["id"].startswith("early")]
    hmg_late = [r["hmg_raw"] for r in t if r["id"].startswith("late")]
    assert np.mean(hmg_early) > np.mean(hmg_late)
    for r in t:  # segment attention within the bound of spec 6 (128 x sum <= 1)
        assert all(a >= 0 for a in r["seg_attn"]) and 128 * sum(r["seg_attn"]) <= 1 + 1e-9


def test_selected_set_is_the_top_ceil_k_n_in_messages_format(gateau_run, samples):
    selected = pq.read_table(str(gateau_run / "out" / "data")).to_pylist()
    assert len(selected) == 2  # ceil(0.1 * 12)
    by_id = {s["id"]: s for s in samples}
    assert all(r["messages"] == by_id[r["id"]]["messages"] for r in selected)
    assert sorted(r["rank"] for r in selected) == [1, 2]  # files are in id order; rank gives the order
    assert all(r["length"] > 500 for r in selected)  # tokens of prompt and response (~2,600 characters)
    scores = pq.read_table(str(gateau_run / "out" / "gateau_scores")).to_pylist()
    for r in scores:  # what each sample's ranking came from: lengths, segments, models and settings
        assert r["n_segments"] == len(r["segments"]) > 2 and 0 < r["cam_response_tokens"] <= r["response_tokens"]
        assert r["sample_tokens"] > r["response_tokens"] > 0
        scoring = {s["label"]: s for s in json.loads(r["scoring"])}
        assert scoring["hmg"]["params"]["short_window"] == 256
        assert scoring["segment_attention"]["params"]["model"] == "smollm2-135m"
    m = dict(Catalog(str(gateau_run / "c.duckdb")).query(
        "SELECT name, value FROM metrics WHERE stage = 'gateau_select'")[1])
    assert "hmg_length_correlation_tokens" in m and m["hmg_std"] > 0 and m["cam_std"] > 0
    n = Catalog(str(gateau_run / "c.duckdb")).query(
        "SELECT count(DISTINCT sample_id) FROM scores WHERE metric = 'short/response_ppl'")[1][0][0]
    assert n == 12  # the scores are in the catalog too, keyed by sample id


def test_reselection_reads_stored_scores_only(gateau_run, monkeypatch, tmp_path):
    import gpu_jobs.lm
    from stages.gateau.stages import reselect

    def no_model(*a, **k):
        raise AssertionError("a model was loaded during re-selection")

    monkeypatch.setattr(gpu_jobs.lm, "load_causal_lm", no_model)
    monkeypatch.setattr(gpu_jobs.lm, "resolve_causal_lm", no_model)
    o = core.SelectOptions(alpha=0.3, ratio=0.5, pool_norm="minmax")
    scores, selected = reselect(str(gateau_run / "out"), o)
    stored = pq.read_table(str(gateau_run / "out" / "gateau_scores")).sort_by([("id", "ascending")]).to_pylist()
    direct = core.rank([r["id"] for r in stored], np.array([r["ppl_short"] for r in stored]),
                       np.array([r["ppl_long"] for r in stored]), [r["seg_ppl"] for r in stored],
                       [r["seg_attn"] for r in stored], o)
    assert scores.column("rank").to_pylist() == direct.rank.tolist() and selected.num_rows == 6
    # and from the command line, in a process where no model could be found at all
    r = run_cli("select", str(gateau_run / "out"), "--alpha", "1.0", "--ratio", "0.25", "--output",
                str(tmp_path / "sel"), env={"LONGFORGE_HOME": str(tmp_path / "empty-home"), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    picked = [json.loads(line) for line in (tmp_path / "sel" / "selected.jsonl").read_text().splitlines()]
    by_hmg = sorted(stored, key=lambda x: (-x["hmg"], x["id"]))
    assert [p["id"] for p in picked] == [x["id"] for x in by_hmg[:3]]  # alpha 1: the HMG-only ranking
