"""HMG (spec gateau.md 3.2): both perplexities over the same response tokens, and the short model
extended to the window through its RoPE configuration."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gpu_jobs.hmg import hmg_rows
from gpu_jobs.lm import load_causal_lm, resolve_causal_lm
from gpu_jobs.scoring import Row, row_nll
from stages import get_stage
from stages.base import SideRow


def _stage(**params):
    cls = get_stage("hmg")
    stage = cls(cls.Params(**params))
    stage.setup()
    return stage


def test_rows_score_the_response_tokens_inside_both_windows():
    prompt, response = list(range(100, 400)), list(range(1000, 1300))  # 300 + 300 tokens
    (short, long_), n = hmg_rows(0, prompt, response, (256, 1024))
    assert n == 255  # the short window holds 256 tokens: 255 of them are predicted from inside it
    for row in (short, long_):
        scored = np.asarray(row.ids)[row.targets].tolist()
        assert scored == response[-255:]  # the same tokens, the last of the response
    assert len(short.ids) == 256 and len(long_.ids) == 600
    (a, b), n = hmg_rows(0, prompt, response[:40], (256, 1024))
    assert n == 40 and np.asarray(a.ids)[a.targets].tolist() == np.asarray(b.ids)[b.targets].tolist()


def test_short_and_long_perplexities_are_over_the_same_tokens_on_smollm2(real_docs):
    """A response longer than the short window: before, the short PPL covered its tail and the long
    PPL all of it. Now both cover the same tail, and each equals a direct computation over it."""
    essay = next(d["text"] for d in sorted(real_docs, key=lambda d: d["id"]) if d["source"] == "paul_graham")
    record = {"id": "s1", "prompt": "### Input:\n" + essay[:1500] + "\n\n### Response:\n", "response": essay[1500:3000]}
    stage = _stage(short_model="smollm2-135m", long_model="smollm2-135m", short_extension="none", short_window=256)
    out, *sides = stage.process_batch([record])[0]
    s = {m["metric"]: m["value"] for m in out["scores"]}
    lm = load_causal_lm("smollm2-135m", device="cpu")
    tok = lm.tokenizer
    resp = tok(record["response"], add_special_tokens=False)["input_ids"]
    assert len(resp) > 256 and s["short/response_tokens"] == len(resp)
    assert s["short/response_scored_tokens"] == s["long/response_scored_tokens"] == 255
    full = [tok.bos_token_id] + tok(record["prompt"], add_special_tokens=False)["input_ids"] + resp
    for prefix, ids in (("short/", full[-256:]), ("long/", full)):
        t = np.zeros(len(ids), dtype=bool)
        t[-255:] = True
        (nll, n), = row_nll(lm, [Row(0, ids, t)])
        assert n == 255 and s[prefix + "response_ppl"] == pytest.approx(math.exp(nll / n), rel=1e-6)
    assert s["short/response_ppl"] > s["long/response_ppl"]  # the short window lost the essay's start
    settings = json.loads(next(x.row for x in sides if isinstance(x, SideRow))["settings"])
    assert settings["short_window"] == 256 and settings["short_rope"] is None


@pytest.fixture(scope="module")
def sibling_folders(tmp_path_factory):
    """Two tiny random Llamas with SmolLM2's tokenizer: a 'short' one trained on 64 positions and a
    'long' one on 256 (stand-ins for LLaMA-2-7B 4k and LongAlign-7B-64k)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(resolve_causal_lm("smollm2-135m")))
    folders = []
    for positions in (64, 256):
        folder = tmp_path_factory.mktemp(f"tiny-{positions}")
        torch.manual_seed(positions)
        LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2,
                                     max_position_embeddings=positions)).save_pretrained(folder)
        tok.save_pretrained(folder)
        folders.append(str(folder))
    return folders


def test_the_short_model_is_extended_to_the_window_by_default(sibling_folders, real_docs):
    short, long_ = sibling_folders
    stage = _stage(short_model=short, long_model=long_)
    assert stage._windows == (256, 256)
    assert stage._short.rope.kind == "dynamic" and stage._short.rope.factor == 4.0  # 256 / 64
    assert stage._short.model.config.rope_parameters["rope_type"] == "dynamic"
    text = " ".join(d["text"] for d in real_docs[:3])
    out, *sides = stage.process_batch([{"id": "x", "prompt": text[:2000], "response": text[2000:2300]}])[0]
    s = {m["metric"]: m["value"] for m in out["scores"]}
    assert s["short/response_scored_tokens"] == s["long/response_scored_tokens"] > 0
    assert s["long/prompt_tokens_cut"] > 0  # the sample is longer than the window: cut from the left
    settings = json.loads(sides[0].row["settings"])
    assert settings["short_rope"] == {"kind": "dynamic", "factor": 4.0} and settings["window"] == 256


def test_models_that_are_not_homologous_are_refused(sibling_folders, tmp_path):
    from transformers import AutoTokenizer

    other = tmp_path / "other"
    import shutil

    shutil.copytree(sibling_folders[0], other)
    tok = AutoTokenizer.from_pretrained(str(other))
    tok.add_tokens(["<not-in-the-sibling>"])
    tok.save_pretrained(other)
    with pytest.raises(ValueError, match="not homologous"):
        _stage(short_model=str(other), long_model=sibling_folders[1])


def test_short_window_and_an_extension_exclude_each_other():
    cls = get_stage("hmg")
    with pytest.raises(ValueError, match="exclude each other"):
        cls.Params(short_model="a", long_model="b", short_window=256)
