"""Offline model resolution: names, paths, and errors that say how to install."""

from __future__ import annotations

import pytest

from gpu_jobs import models


def test_named_tokenizers_resolve_to_local_files():
    for name in models.TOKENIZER_NAMES:
        assert models.tokenizer_path(name).name == "tokenizer.json"


def test_a_folder_or_file_path_works(tmp_path):
    src = models.tokenizer_path("minilm")
    assert models.tokenizer_path(str(src)) == src
    assert models.tokenizer_path(str(src.parent)) == src


def test_smollm2_tokenizer_matches_the_gguf_vocabulary():
    tok = models.load_tokenizer("smollm2")
    assert tok.get_vocab_size() == 49152  # SmolLM2's vocabulary
    assert tok.decode(tok.encode("In the beginning God created").ids) == "In the beginning God created"


def test_missing_smollm2_says_make_models(monkeypatch, tmp_path):
    monkeypatch.setenv("LONGFORGE_HOME", str(tmp_path))
    with pytest.raises(models.ModelNotAvailable, match="make models"):
        models.tokenizer_path("smollm2")
