"""The simple hack's pure parts (spec indonesian-stopword-hack.md 7) on real Indonesian text: the
Quran commentary corpus and the Debian Reference in Indonesian. Truncation is checked against the
tokenizers library's own head truncation, an implementation independent of ours."""

from __future__ import annotations

from collections import Counter

import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from gpu_jobs.models import tokenizer_path
from stages.idhack import core
from tests.conftest import build_corpus


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> list[str]:
    base = tmp_path_factory.mktemp("id")
    rows = pq.read_table(f"{build_corpus('quran_tafsir_id', base)}/data").to_pylist()[::6]
    rows += pq.read_table(f"{build_corpus('debian_reference_id', base)}/data").to_pylist()
    return [r["text"] for r in rows]


@pytest.fixture(scope="module", params=["minilm", "smollm2"])
def tokenizer(request):
    tok = Tokenizer.from_file(str(tokenizer_path(request.param)))
    tok.no_truncation()
    tok.no_padding()
    return tok


def is_subsequence(small, big) -> bool:
    it = iter(big)
    return all(any(x == y for y in it) for x in small)


@pytest.mark.parametrize("name", core.STOPWORD_LISTS)
def test_no_stop_word_survives_and_the_rest_is_the_input_in_order(texts, name):
    stops, version = core.stopword_list(name)
    assert len(stops) > 100 and name.split("iso")[0] in version.lower()
    removed = 0
    for text in texts:
        ws = core.words(text)
        done = core.apply_hack(ws, core.PRESETS["stopwords"], stops, min_words=0)
        out = [ws[i] for i in done.kept]
        assert not any(w.lower() in stops for w in out)
        assert out == [w for w in ws if w.lower() not in stops]  # every other word, punctuation included
        removed += done.removed["stopwords"]
    assert removed > 1000


def test_words_split_punctuation_off_and_keep_inner_marks():
    assert core.words('(Segala puji bagi Allah), anak-anak "firman-Nya" 10.000.') == [
        "(", "Segala", "puji", "bagi", "Allah", ")", ",", "anak-anak", '"', "firman-Nya", '"', "10.000", "."]


def test_punctuation_is_kept_unless_removed(texts):
    stops, _ = core.stopword_list("spacy")
    for text in texts[:40]:
        ws = core.words(text)
        marks = [w for w in ws if core.is_punct(w)]
        assert marks
        kept = [ws[i] for i in core.apply_hack(ws, core.PRESETS["stopwords"], stops, min_words=0).kept]
        assert [w for w in kept if core.is_punct(w)] == marks
        gone = [ws[i] for i in core.apply_hack(ws, core.PRESETS["punctuation"], stops, min_words=0).kept]
        assert not any(core.is_punct(w) for w in gone) and len(gone) == len(ws) - len(marks)


def test_low_frequency_words_are_those_rare_in_training(texts):
    """Counted here over a 'training' half with a Counter; the hack gets only the rare set."""
    stops, _ = core.stopword_list("spacy")
    train, rest = texts[::2], texts[1::2]
    counts = Counter(w.lower() for t in train for w in core.words(t) if not core.is_punct(w))
    for text in rest[:30] + train[:10]:
        ws = core.words(text)
        rare = {w.lower() for w in ws if not core.is_punct(w) and counts[w.lower()] < 2}
        kept = [ws[i] for i in core.apply_hack(ws, core.PRESETS["low_freq"], stops, rare, min_words=0).kept]
        assert kept == [w for w in ws if core.is_punct(w) or counts[w.lower()] >= 2]


def test_recurring_words_keep_only_their_first_occurrence(texts):
    stops, _ = core.stopword_list("spacy")
    for text in texts[:40]:
        ws = core.words(text)
        kept = core.apply_hack(ws, core.PRESETS["recurring"], stops, min_words=0).kept
        words_kept = [ws[i].lower() for i in kept if not core.is_punct(ws[i])]
        assert len(words_kept) == len(set(words_kept)) == len({w.lower() for w in ws if not core.is_punct(w)})
        first = {}
        for i, w in enumerate(ws):
            first.setdefault(w.lower(), i)
        assert all(first[ws[i].lower()] == i for i in kept if not core.is_punct(ws[i]))


def test_each_hack_is_idempotent_and_keeping_everything_changes_nothing(texts):
    stops, _ = core.stopword_list("spacy")
    for text in texts[:20]:
        ws = core.words(text)
        rare = {w.lower() for w in ws[::7]}
        assert core.apply_hack(ws, core.PRESETS["none"], stops, rare).kept == list(range(len(ws)))
        for hack in core.grid():
            once = [ws[i] for i in core.apply_hack(ws, hack, stops, rare, min_words=0).kept]
            twice = [once[i] for i in core.apply_hack(once, hack, stops, rare, min_words=0).kept]
            assert once == twice and is_subsequence(once, ws)


def test_fallback_when_too_few_words_remain():
    stops, _ = core.stopword_list("spacy")
    ws = core.words("dan yang itu adalah untuk dengan pada ini dari dalam akan ke tidak juga ada saya kami rumah")
    done = core.apply_hack(ws, core.PRESETS["stopwords"], stops)
    assert done.fallback and done.kept == list(range(len(ws)))
    assert not core.apply_hack(ws, core.PRESETS["stopwords"], stops, min_words=1).fallback


def test_truncations_are_the_tokenizers_own_head_truncation_and_prefixes(texts, tokenizer):
    for text in texts[:30]:
        hacked = " ".join(core.words(text))
        cuts = core.truncations(tokenizer, hacked, [512, 256, 128])
        full = tokenizer.encode(hacked).ids
        for length, cut in cuts.items():
            tokenizer.enable_truncation(max_length=length)
            try:
                assert cut.ids == tokenizer.encode(hacked).ids  # the library's own, specials kept
            finally:
                tokenizer.no_truncation()
            assert len(cut.ids) == min(length, len(full)) and cut.n_full == len(full)
        t = 1 if tokenizer.token_to_id("[SEP]") is not None else 0  # [SEP] closes every BERT cut
        for short, long in ((128, 256), (256, 512)):
            head = cuts[short].ids[:len(cuts[short].ids) - t]
            assert cuts[long].ids[:len(head)] == head


def test_words_kept_are_the_words_the_kept_tokens_begin(texts, tokenizer):
    for text in texts[:20]:
        ws = core.words(text)
        hacked = " ".join(ws)
        for length, cut in core.truncations(tokenizer, hacked, [256, 64]).items():
            enc = tokenizer.encode(hacked, add_special_tokens=False)
            content = len(cut.ids) - (len(tokenizer.encode(hacked).ids) - len(enc.ids))
            covered = hacked[:enc.offsets[content - 1][1]] if content else ""
            assert cut.words_kept == len(covered.split(" ")) if covered else cut.words_kept == 0
            assert cut.chars_kept == len(covered)
            if cut.n_full <= length:
                assert cut.words_kept == len(ws)


def test_content_kept_counts_occurrences_and_types():
    stops = frozenset({"dan", "yang"})
    ws = ["buku", "dan", "pena", "yang", "buku", ",", "meja"]
    assert core.content_kept(ws, list(range(7)), 7, stops) == (1.0, 1.0)
    # content: buku, pena, buku, meja (4 occurrences, 3 words); the first 3 words hold buku and pena
    assert core.content_kept(ws, list(range(7)), 3, stops) == (2 / 4, 2 / 3)
    assert core.content_kept(ws, [0, 2, 4, 6], 3, stops) == (3 / 4, 2 / 3)  # stop words out: buku, pena, buku


def _no_surrogates():
    """Characters without lone surrogates: tokenizers cannot take them (the oracle has no answer),
    and the reader rejects them before a stage sees a record."""
    from hypothesis import strategies as st

    return st.characters(blacklist_categories=("Cs",))


# The piece-by-piece encoder (PieceEncoder) must be the tokenizer's own encoding, bit for bit: the
# oracle is tokenizers' `encode` of the whole text.
def _assert_same_encoding(encoder: core.PieceEncoder, tokenizer, text: str) -> None:
    mine, theirs = encoder.encode(text), tokenizer.encode(text)
    assert mine.ids == theirs.ids, text
    assert mine.special_tokens_mask == theirs.special_tokens_mask, text
    offsets = mine.offsets  # a tokenizers Encoding builds the list anew on each access
    assert list(offsets) == theirs.offsets, text
    assert [offsets[k] for k in range(-len(theirs.ids), 0)] == theirs.offsets


def test_piece_encoder_is_the_tokenizers_own_encoding_on_real_text(texts, tokenizer):
    encoder = core.PieceEncoder(tokenizer)
    assert encoder.per_piece == (tokenizer.token_to_id("[CLS]") is not None)  # WordPiece yes, SmolLM2's BPE no
    for text in texts:
        _assert_same_encoding(encoder, tokenizer, " ".join(core.words(text)))
        _assert_same_encoding(encoder, tokenizer, text)  # newlines, runs of spaces: still the same
    for text in texts[:40]:
        assert core.truncations(encoder, text, [512, 128]) == core.truncations(tokenizer, text, [512, 128])


def test_piece_encoder_matches_on_hostile_text():
    """Random Unicode (combining marks, CJK, controls, zero-width, long words past WordPiece's 100
    characters, leading and trailing spaces) fuzzed against the whole-text encoding."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    tok = Tokenizer.from_file(str(tokenizer_path("minilm")))
    tok.no_truncation()
    tok.no_padding()
    encoder = core.PieceEncoder(tok)
    alphabet = st.one_of(_no_surrogates(), st.sampled_from(list(" \t\n\u00a0\u200b\u0301é中,.-'")))
    word = st.one_of(st.text(alphabet, max_size=12), st.text(st.sampled_from("ab"), min_size=95, max_size=110))

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.lists(word, max_size=12), st.sampled_from([" ", "  ", "\n"]))
    def check(parts, sep):
        _assert_same_encoding(encoder, tok, sep.join(parts))

    check()


def test_words_fast_path_is_the_spec_rule():
    """Spec 4.1 applied character by character (no fast path) on pieces that start or end with
    letters, digits, marks and symbols of many scripts."""
    def by_rule(text):
        out = []
        for piece in text.split():
            start, end = 0, len(piece)
            while start < end and core.is_punct(piece[start]):
                start += 1
            while end > start and core.is_punct(piece[end - 1]):
                end -= 1
            out += list(piece[:start]) + ([piece[start:end]] if start < end else []) + list(piece[end:])
        return out

    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=500, deadline=None, database=None)
    @given(st.text(st.one_of(_no_surrogates(), st.sampled_from(list(" .,-'\"()½²٣Ⅻ€$a1"))), max_size=40))
    def check(text):
        assert core.words(text) == by_rule(text)

    check()


def test_content_prefixes_give_content_kept_for_every_cut(texts):
    stops, _ = core.stopword_list("spacy")
    for text in texts[:40]:
        ws = core.words(text)
        lowered = [w.lower() for w in ws]
        content = [core.is_content(w, stops) for w in ws]
        n, n_types = sum(content), len({w for w, c in zip(lowered, content, strict=True) if c})
        for hack in ("none", "stopwords", "recurring"):
            kept = core.apply_hack(ws, core.PRESETS[hack], stops, min_words=0).kept
            occ, types = core.content_kept_prefixes(lowered, content, kept)
            for k in sorted({0, 1, len(kept) // 3, len(kept)}):
                assert core.content_kept(ws, kept, k, stops) == (occ[k] / n, types[k] / n_types)
