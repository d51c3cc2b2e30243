"""Scoring jobs (issue 6, must show) on real paragraphs with the bundled SmolLM2, and on tiny random
Llama models built from a config (with grouped-query attention) where a brute-force reference over
full attention matrices is affordable."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from catalog import Catalog
from gpu_jobs import scoring
from gpu_jobs.lm import load_causal_lm, model_from_config
from gpu_jobs.scoring import (
    ScoreSettings,
    budget_batches,
    cam_layout,
    perplexity_rows,
    response_row,
    score_part,
    segment_attention,
)
from tests.conftest import REPO, run_cli, write_jsonl


@pytest.fixture(scope="module")
def smollm2():
    from transformers.utils import logging

    logging.disable_progress_bar()
    return load_causal_lm("smollm2-135m", device="cpu")


def _ppl(out: list[dict]) -> dict[str, float]:
    return {o["sample_id"]: o["value"] for o in out if o["metric"] == "ppl"}


def _direct_ppl(lm, text: str) -> float:
    ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
    with torch.inference_mode():
        return math.exp(lm.model(ids, labels=ids).loss.item())


@pytest.fixture(scope="module")
def batched(smollm2, paragraphs):
    return _ppl(score_part(smollm2, ScoreSettings("perplexity", token_budget=4096), paragraphs))


def test_perplexity_equals_transformers_directly(smollm2, paragraphs, batched):
    assert len(paragraphs) == 50
    for p in paragraphs:
        assert batched[p["id"]] == pytest.approx(_direct_ppl(smollm2, p["text"]), rel=1e-4)


def test_batch_size_one_equals_batched(smollm2, paragraphs, batched):
    single = _ppl(score_part(smollm2, ScoreSettings("perplexity", token_budget=1), paragraphs))
    assert single.keys() == batched.keys()
    for k, v in single.items():
        assert v == pytest.approx(batched[k], rel=1e-5)


def test_natural_text_scores_lower_than_its_words_shuffled(smollm2, paragraphs, batched):
    rng = np.random.default_rng(0)
    shuffled = []
    for p in paragraphs:
        words = p["text"].split()
        rng.shuffle(words)
        shuffled.append({"id": p["id"], "text": " ".join(words)})
    worse = _ppl(score_part(smollm2, ScoreSettings("perplexity", token_budget=4096), shuffled))
    assert all(batched[k] < worse[k] for k in batched)


def test_sliding_window_agrees_with_full_window_and_with_the_strided_recipe(smollm2, paragraphs, batched):
    texts = paragraphs[:8]
    covering = _ppl(score_part(smollm2, ScoreSettings("perplexity", max_tokens=4096, stride=64), texts))
    for p in texts:
        assert covering[p["id"]] == pytest.approx(batched[p["id"]], rel=1e-5)
    window, stride = 48, 16
    slid = _ppl(score_part(smollm2, ScoreSettings("perplexity", max_tokens=window, stride=stride), texts))
    for p in texts:  # the strided recipe of the transformers docs, written out independently
        ids = torch.tensor([smollm2.tokenizer(p["text"])["input_ids"]])
        n, prev_end, nll, count = ids.shape[1], 0, 0.0, 0
        for begin in range(0, n, stride):
            end = min(begin + window, n)
            trg = end - prev_end
            x = ids[:, begin:end]
            y = x.clone()
            y[:, :-trg] = -100
            with torch.inference_mode():
                loss = smollm2.model(x, labels=y).loss.item()
            k = int((y[:, 1:] != -100).sum())
            nll, count, prev_end = nll + loss * k, count + k, end
            if end == n:
                break
        assert slid[p["id"]] == pytest.approx(math.exp(nll / count), rel=1e-4)
        assert count == n - 1  # every token after the first predicted exactly once


def test_rows_and_batches():
    rows = perplexity_rows(0, list(range(100)), window=40, stride=20)
    assert sum(int(r.targets.sum()) for r in rows) == 99 and all(len(r.ids) <= 40 for r in rows)
    row, cut = response_row(0, list(range(50)), [100, 101, 102], window=20)
    assert cut == 33 and row.ids[-3:] == [100, 101, 102] and row.targets.sum() == 3 and row.targets[-3:].all()
    row, cut = response_row(0, [1, 2], list(range(100, 130)), window=20)  # response itself cut from the left
    assert cut == 12 and row.targets.sum() == 19  # the first kept token has nothing before it
    batches = list(budget_batches(perplexity_rows(0, list(range(300)), 64, 32) * 3, budget=200))
    assert all(len(b) * max(len(r.ids) for r in b) <= 200 or len(b) == 1 for b in batches)


def _brute_segment_attention(model, ids, q0, starts, seg) -> np.ndarray:
    model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            out = model.base_model(input_ids=torch.tensor([ids]), output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
    per_layer = []
    for a in out.attentions:  # [1, heads, T, T], the full matrices
        p = a[0].double().mean(0)[q0:]
        per_layer.append([p[:, s:s + seg].mean(1).mean(0).item() for s in starts])
    return np.array(per_layer)


def _tiny(heads: int, kv_heads: int):
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512)
    return model_from_config(cfg, None, device="cpu")


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (8, 1)])
def test_segment_attention_equals_brute_force_on_tiny_models(heads, kv_heads):
    lm = _tiny(heads, kv_heads)
    ids = np.random.default_rng(heads + kv_heads).integers(0, 300, 260).tolist()
    starts, seg, q0 = [0, 16, 48, 112, 176], 16, 220
    got = segment_attention(lm, ids, q0, starts, seg)
    np.testing.assert_allclose(got, _brute_segment_attention(lm.model, ids, q0, starts, seg), rtol=1e-5, atol=1e-9)
    assert (got >= 0).all() and (seg * got.sum(axis=1) <= 1 + 1e-9).all()


def test_segment_attention_equals_brute_force_on_smollm2(smollm2, paragraphs):
    ids = smollm2.tokenizer(" ".join(p["text"] for p in paragraphs[:4]))["input_ids"][:300]
    starts, seg, q0 = [0, 32, 64, 160], 32, 260
    got = segment_attention(smollm2, ids, q0, starts, seg)
    np.testing.assert_allclose(got, _brute_segment_attention(smollm2.model, ids, q0, starts, seg), rtol=1e-4,
                               atol=1e-8)
    assert (got >= 0).all() and (seg * got.sum(axis=1) <= 1 + 1e-9).all()


def test_segment_jobs_score_every_whole_segment(smollm2, paragraphs):
    rec = {"id": "s", "context": " ".join(p["text"] for p in paragraphs[:6]), "instruction": "Summarise.",
           "response": paragraphs[6]["text"][:200]}
    s = ScoreSettings("segment-ppl", segment_tokens=64, max_segments=4, token_budget=2048)
    out = score_part(smollm2, s, [rec])
    seg_ppl = {o["metric"]: o["value"] for o in out if o["metric"].startswith("segment_ppl:")}
    assert len(seg_ppl) == 4 and all(v > 1 for v in seg_ppl.values())
    one = score_part(smollm2, ScoreSettings("segment-ppl", segment_tokens=64, max_segments=4, token_budget=1), [rec])
    single = {o["metric"]: o["value"] for o in one if o["metric"].startswith("segment_ppl:")}
    assert single == pytest.approx(seg_ppl, rel=1e-5)
    att = score_part(smollm2, ScoreSettings("segment-attention", segment_tokens=64, max_segments=4), [rec])
    vals = {o["metric"].split(":")[1]: o["value"] for o in att if o["metric"].startswith("segment_attention:")}
    assert vals.keys() == {k.split(":")[1] for k in seg_ppl} and 64 * sum(vals.values()) <= 1


def test_cam_inputs_decode_to_the_three_block_layout_with_bos(smollm2, paragraphs, monkeypatch):
    """Spec gateau.md 3.1 / 3.3: segment j in the input block, then the instruction block and the
    response block, after BOS (else the first context token becomes the attention sink); the
    attention pass holds the whole context there, and only response tokens are scored."""
    rec = {"id": "L", "context": " ".join(p["text"] for p in paragraphs[:3]), "instruction": "What is it about?",
           "response": " It is about many things."}
    tok = smollm2.tokenizer
    assert tok.bos_token_id is not None
    ctx = tok(rec["context"], add_special_tokens=False)["input_ids"]
    rows = []
    real_nll = scoring.row_nll
    monkeypatch.setattr(scoring, "row_nll", lambda lm, batch: rows.extend(batch) or real_nll(lm, batch))
    score_part(smollm2, ScoreSettings("segment-ppl", segment_tokens=64, max_segments=3), [rec])
    assert len(rows) == 3
    for r in rows:
        j = r.tag
        segment = tok.decode(ctx[j * 64:(j + 1) * 64])
        want = (f"{tok.bos_token}### Input:\n{segment}\n\n### Instruction:\n{rec['instruction']}\n\n"
                f"### Response:\n{rec['response']}")
        assert tok.decode(r.ids) == want and r.ids[0] == tok.bos_token_id
        assert tok.decode(np.asarray(r.ids)[r.targets].tolist()) == rec["response"]  # the response alone is scored
    seen = []
    real_att = scoring.segment_attention
    monkeypatch.setattr(scoring, "segment_attention",
                        lambda lm, ids, q0, starts, seg: seen.append((ids, q0, starts)) or real_att(lm, ids, q0,
                                                                                                    starts, seg))
    score_part(smollm2, ScoreSettings("segment-attention", segment_tokens=64, max_segments=3), [rec])
    (ids, q0, starts), = seen
    assert tok.decode(ids) == (f"{tok.bos_token}### Input:\n{tok.decode(ctx)}\n\n### Instruction:\n"
                               f"{rec['instruction']}\n\n### Response:\n{rec['response']}")
    assert tok.decode(ids[q0:]) == rec["response"]
    assert [tok.decode(ids[s:s + 64]) for s in starts] == [tok.decode(ctx[j * 64:(j + 1) * 64]) for j in range(3)]


def test_score_as_a_pipeline_stage(paragraphs, tmp_path, smollm2):
    inp = write_jsonl(tmp_path / "paras.jsonl", paragraphs[:5])
    spec = (REPO / "pipelines" / "perplexity.yaml").read_text().replace("max_tokens: 2048", "max_tokens: 4096")
    pipe = tmp_path / "ppl.yaml"
    pipe.write_text(spec)
    catalog = tmp_path / "c.duckdb"
    r = run_cli("run", str(pipe), "--input", str(inp), "--output", str(tmp_path / "out"), "--catalog", str(catalog),
                "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = pq.read_table(str(tmp_path / "out" / "data")).to_pylist()
    assert len(rows) == 5
    direct = _ppl(score_part(smollm2, ScoreSettings("perplexity"), [{"id": r["id"], "text": r["text"]} for r in rows]))
    for row in rows:  # the value the job gives on the records as they reach the stage (normalised)
        ppl = {s["metric"]: s["value"] for s in row["scores"]}["ppl"]
        assert ppl == pytest.approx(direct[row["id"]], rel=1e-5)
    n = Catalog(str(catalog)).query("SELECT count(*) FROM scores WHERE metric = 'ppl' AND job = 'perplexity'")[1]
    assert n[0][0] == 5


def test_segment_numbers_agree_between_the_two_segment_jobs_when_the_window_cuts_the_context(smollm2, paragraphs):
    """A context longer than the window loses whole segments from its start in segment-attention;
    the segments that remain keep the numbers segment-ppl gives them (GATEAU pairs them by number)."""
    rec = {"id": "w", "context": " ".join(p["text"] for p in paragraphs[:8]), "instruction": "Summarise.",
           "response": "It is about many things."}
    ppl = score_part(smollm2, ScoreSettings("segment-ppl", segment_tokens=64, max_tokens=400), [rec])
    att = score_part(smollm2, ScoreSettings("segment-attention", segment_tokens=64, max_tokens=400), [rec])
    ppl_j = {o["metric"].split(":")[1] for o in ppl if o["metric"].startswith("segment_ppl:")}
    att_j = {o["metric"].split(":")[1] for o in att if o["metric"].startswith("segment_attention:")}
    cut = {o["metric"]: o["value"] for o in att}["segments_cut_by_window"]
    assert cut > 0 and att_j and att_j < ppl_j and min(int(j) for j in att_j) == cut
    # the kept segments' attention equals a forward over the cut context computed directly
    ctx = smollm2.tokenizer(rec["context"], add_special_tokens=False)["input_ids"]
    instr = smollm2.tokenizer(rec["instruction"], add_special_tokens=False)["input_ids"]
    resp = smollm2.tokenizer(rec["response"], add_special_tokens=False)["input_ids"]
    kept = ctx[int(cut) * 64:]
    js = sorted(int(j) for j in att_j)
    ids, c0, q0 = cam_layout(smollm2, ScoreSettings("segment-attention"), kept, instr, resp)
    direct = segment_attention(smollm2, ids, q0, [c0 + (j - int(cut)) * 64 for j in js], 64).mean(axis=0)
    got = {int(o["metric"].split(":")[1]): o["value"] for o in att if o["metric"].startswith("segment_attention:")}
    assert [got[j] for j in js] == pytest.approx(direct.tolist(), rel=1e-6)
