"""RoPE extension through the model config (spec gateau.md 3.2): a tiny random Llama saved as a
real model folder (with SmolLM2's tokenizer) stands in for a short-window checkpoint, so that the
test runs the same loading path as a real model in a second."""

from __future__ import annotations

import pytest
import torch

from gpu_jobs.lm import RopeExtension, load_causal_lm, resolve_causal_lm
from gpu_jobs.scoring import ScoreSettings

TRAINED = 64  # the tiny model's max_position_embeddings


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=TRAINED)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(resolve_causal_lm("smollm2-135m"))).save_pretrained(folder)
    return folder


def _logits(lm, n: int) -> torch.Tensor:
    ids = torch.arange(5, 5 + n).unsqueeze(0)
    with torch.inference_mode():
        return lm.model(input_ids=ids).logits[0].float()


@pytest.mark.parametrize("kind", ["linear", "dynamic", "yarn"])
def test_the_extension_is_applied_as_configured(tiny_folder, kind):
    plain = load_causal_lm(str(tiny_folder), device="cpu")
    assert plain.max_positions == TRAINED and plain.rope is None
    short_plain, long_plain = _logits(plain, 40), _logits(plain, 120)
    lm = load_causal_lm(str(tiny_folder), device="cpu", rope=RopeExtension(kind, 2.0))
    params = lm.model.config.rope_parameters
    assert params["rope_type"] == kind and params["factor"] == 2.0
    assert lm.max_positions == 2 * TRAINED  # the default window of a job on this model
    if kind == "yarn":
        assert params["original_max_position_embeddings"] == TRAINED
    short, long_ = _logits(lm, 40), _logits(lm, 120)
    assert not torch.allclose(long_, long_plain, atol=1e-4)  # past the trained length, positions change
    if kind == "dynamic":  # NTK rescales only past the trained length: shorter inputs are untouched
        assert torch.allclose(short, short_plain, atol=1e-5)
    else:  # linear and YaRN change every position's rotation
        assert not torch.allclose(short, short_plain, atol=1e-4)


def test_the_extension_is_part_of_the_scores_identity():
    a = ScoreSettings("response-loglik")
    b = ScoreSettings("response-loglik", rope=RopeExtension("dynamic", 2.0))
    c = ScoreSettings("response-loglik", rope=RopeExtension("dynamic", 4.0))
    assert len({a.hash(), b.hash(), c.hash()}) == 3  # a score is never reused across extensions


@pytest.mark.parametrize("kind, factor", [("ntk", 2.0), ("linear", 1.0), ("yarn", 0.5)])
def test_bad_extensions_are_refused(kind, factor):
    with pytest.raises(ValueError):
        RopeExtension(kind, factor)
