"""ChFT's pure parts against spec chft.md 7, on real text: People's Daily documents (Chinese) and
KJV chapters (English), with hypotheses made by the homophone channel and by random edit scripts
(insertions, deletions, substitutions, punctuation changes at random places)."""

from __future__ import annotations

import json
import random
import re

import pyarrow.parquet as pq
import pytest

from stages.chft import core, scoring
from stages.chft import numbers as chft_numbers
from tests.conftest import build_corpus

ALNUM_OR_CJK = re.compile(r"[0-9A-Za-z\u3400-\u9fff]")


@pytest.fixture(scope="module")
def zh_docs(tmp_path_factory) -> list[str]:
    folder = build_corpus("peoples_daily_docs", tmp_path_factory.mktemp("pd"))
    rows = pq.read_table(f"{folder}/data").to_pylist()
    return [core.canonical(r["text"]) for r in rows[::13]][:200]


@pytest.fixture(scope="module")
def en_docs(corpora_dir) -> list[str]:
    rows = pq.read_table(str(corpora_dir / "kjv_chapters" / "data")).to_pylist()
    return [core.canonical(r["text"])[:3000] for r in rows[::9]][:120]


def random_edits(text: str, rng: random.Random, n: int) -> str:
    """``text`` with ``n`` random edits: a stretch dropped, characters inserted or substituted
    (drawn from the text itself, so homophones and words of the language occur), marks swapped."""
    chars = list(text)
    alphabet = sorted(set(text)) + ["，", "。", ",", ".", " ", "5", "五"]
    for _ in range(n):
        if not chars:
            chars = [rng.choice(alphabet)]
            continue
        i = rng.randrange(len(chars))
        op = rng.random()
        if op < 0.3:
            del chars[i:i + rng.randint(1, 4)]
        elif op < 0.6:
            chars[i:i] = [rng.choice(alphabet) for _ in range(rng.randint(1, 3))]
        elif op < 0.9:
            chars[i] = rng.choice(alphabet)
        else:
            chars[i] = rng.choice("，。、；,.;")
    return "".join(chars)


def check_pairs(hyp: str, ref: str, pairs: list[core.Pair]) -> None:
    """Spec 7: the pairs rebuild the reference; empty iff equal; in bounds, sorted, not overlapping,
    each span the text at its offsets."""
    assert core.apply_pairs(hyp, pairs) == ref
    assert (not pairs) == (hyp == ref)
    end_h = end_r = 0
    for p in pairs:
        assert end_h <= p.hyp_start <= p.hyp_end <= len(hyp) and end_r <= p.ref_start <= p.ref_end <= len(ref)
        assert hyp[p.hyp_start:p.hyp_end] == p.hyp_span and ref[p.ref_start:p.ref_end] == p.ref_span
        assert p.hyp_span != p.ref_span and p.type in core.PAIR_TYPES
        if p.type == "punctuation":
            assert not ALNUM_OR_CJK.search(p.hyp_span + p.ref_span)
        end_h, end_r = p.hyp_end, p.ref_end
    # a pair with an empty hypothesis side could not be found in it: only an empty hypothesis has one
    assert all(p.hyp_span for p in pairs) or hyp == ""


def test_channel_pairs_rebuild_every_real_chinese_document(zh_docs):
    assert len(zh_docs) >= 150
    channel = core.Channel(homophone=0.05, deletion=0.01, insertion=0.01, punctuation=0.3)
    types = set()
    for k, ref in enumerate(zh_docs):
        hyp = core.noisy_hypothesis(ref, channel, random.Random(k))
        pairs = core.pairs_between(hyp, ref, "zh")
        check_pairs(hyp, ref, pairs)
        types |= {p.type for p in pairs}
    assert {"homophone", "punctuation", "itn", "lexical"} <= types


@pytest.mark.parametrize("language", ["zh", "en"])
def test_random_edit_scripts_are_undone_by_their_pairs(language, zh_docs, en_docs):
    docs = zh_docs if language == "zh" else en_docs
    rng = random.Random(7)
    for k in range(300):
        ref = docs[k % len(docs)]
        if k % 3 == 0:  # short stretches too, where edits meet the ends of the text
            start = rng.randrange(len(ref))
            ref = ref[start:start + rng.randint(1, 40)]
        hyp = random_edits(ref, rng, rng.randint(0, 25))
        check_pairs(hyp, ref, core.pairs_between(hyp, ref, language))


@pytest.mark.parametrize(("hyp", "ref"), [("", "今天天气很好。"), ("今天天气很好。", ""), ("", ""),
                                          ("好", "今天天气很好。"), ("今天天气很好。今天天气很好。", "今天天气很好。")])
def test_edges_empty_cut_and_repeated_text(hyp, ref):
    check_pairs(hyp, ref, core.pairs_between(hyp, ref, "zh"))


def test_repeated_substrings_are_told_apart_by_offset():
    ref = "我们说好。我们说好。我们说好。"
    hyp = "我们说好。我们说号。我们说好。"
    (pair,) = core.pairs_between(hyp, ref, "zh")
    assert "号" in pair.hyp_span and 5 <= pair.hyp_start < 10  # the second sentence, not the first
    assert core.apply_pairs(hyp, [pair]) == ref
    assert json.loads(json.dumps([pair.as_dict()]))[0]["hyp_start"] == pair.hyp_start


@pytest.mark.parametrize(("hyp", "ref", "kind"), [
    ("，", "。", "punctuation"),
    ("一百二十", "120", "itn"),
    ("二零二四年", "2024年", "itn"),
    ("百分之五", "5%", "itn"),
    ("他们", "她们", "homophone"),
    ("天气", "地方", "lexical"),
    ("colour", "color", "lexical"),
])
def test_pair_types_on_known_cases(hyp, ref, kind):
    assert core.pair_type(hyp, ref) == kind


def test_insertion_and_deletion_are_named_by_the_side_that_is_empty():
    ref = "北京今天下雨了。"
    deleted = core.pairs_between("北京下雨了。", ref, "zh")
    inserted = core.pairs_between("北京今天今天下雨了。", ref, "zh")
    assert [p.type for p in deleted] == ["deletion"] and [p.type for p in inserted] == ["insertion"]


def test_itn_pairs_write_the_same_number(zh_docs):
    channel = core.Channel(homophone=0, deletion=0, insertion=0, punctuation=0, verbalize_numbers=True)
    seen = 0
    for k, ref in enumerate(zh_docs[:80]):
        hyp = core.noisy_hypothesis(ref, channel, random.Random(k))
        for p in core.pairs_between(hyp, ref, "zh"):
            if p.type == "itn":
                seen += 1
                a, b = core.number_value(p.hyp_span), core.number_value(p.ref_span)
                assert (a is not None and a == b) or \
                    "".join(chft_numbers.numbers_read(p.hyp_span).split()) == "".join(p.ref_span.split())
    assert seen > 20


def test_cer_helper():
    assert core.cer("今天", "今天") == 0.0
    assert core.cer("", "今天天气") == 1.0 and core.cer("", "") == 0.0
    assert core.cer("今天天汽", "今天天气") == pytest.approx(0.25)


def test_tokens_and_sentences_give_back_the_text(zh_docs, en_docs):
    for text, lang in [(t, "zh") for t in zh_docs[:50]] + [(t, "en") for t in en_docs[:50]]:
        assert "".join(core.tokens(text, lang)) == text
        assert "".join(core.sentences(text, lang)) == text
    assert core.sentences("第一句。第二句！第三句", "zh") == ["第一句。", "第二句！", "第三句"]


def test_canonical_folds_width_and_cjk_spaces():
    assert core.canonical("今天 天气\u3000很好 ，ＡＢＣ１２３") == "今天天气很好，ABC123"
    assert core.canonical("  two   words\n") == "two words"
    # Whisper's ASCII marks in Chinese compare as the full-width ones; English and numbers untouched
    assert core.canonical("我们看到的是,作者 .好? 3.5 OK, fine.") == "我们看到的是，作者。好？ 3.5 OK, fine."


@pytest.mark.parametrize("language", ["zh", "en"])
def test_segments_concatenate_to_the_full_texts_and_hold_its_pairs(language, zh_docs, en_docs):
    docs = zh_docs if language == "zh" else en_docs
    rng = random.Random(3)
    for k, ref in enumerate(docs[:80]):
        hyp = random_edits(ref, rng, rng.randint(0, 30))
        pairs = core.pairs_between(hyp, ref, language)
        segs = core.segments(hyp, ref, pairs, language, random.Random(k))
        assert "".join(hyp[s.hyp_start:s.hyp_end] for s in segs) == hyp
        assert "".join(ref[s.ref_start:s.ref_end] for s in segs) == ref
        shifted = [core.Pair(p.hyp_span, p.ref_span, p.hyp_start + s.hyp_start, p.hyp_end + s.hyp_start,
                             p.ref_start + s.ref_start, p.ref_end + s.ref_start, p.type) for s in segs for p in s.pairs]
        assert shifted == pairs
        for s in segs:
            h, r = hyp[s.hyp_start:s.hyp_end], ref[s.ref_start:s.ref_end]
            assert core.apply_pairs(h, s.pairs) == r
        assert len(segs) >= min(2, len(core.sentences(hyp, language))) or len(hyp) < 300


def test_channel_is_deterministic_and_its_cer_follows_its_rate(zh_docs):
    sample = "".join(zh_docs)[:10_000]
    cjk = sum(1 for c in sample if core._CJK_CHAR.match(c)) / len(sample)
    for rates in [(0.03, 0.005, 0.005), (0.1, 0.02, 0.02)]:
        channel = core.Channel(*rates, punctuation=0.0, verbalize_numbers=False)
        a = core.noisy_hypothesis(sample, channel, random.Random(11))
        assert a == core.noisy_hypothesis(sample, channel, random.Random(11))
        assert a != core.noisy_hypothesis(sample, channel, random.Random(12))
        expected = sum(rates) * cjk
        assert 0.7 * expected <= core.cer(a, sample) <= 1.3 * expected
    silent = core.Channel(0, 0, 0, 0, verbalize_numbers=False)
    assert core.noisy_hypothesis(sample, silent, random.Random(1)) == sample
    spoken = core.noisy_hypothesis(sample, core.Channel(0, 0, 0, 0, verbalize_numbers=True), random.Random(1))
    assert not re.search(r"\d", spoken) and core.cer(spoken, sample) > 0


def test_homophone_substitutes_read_the_same(zh_docs):
    ref = zh_docs[0]
    hyp = core.noisy_hypothesis(ref, core.Channel(homophone=0.2, deletion=0, insertion=0, punctuation=0,
                                                  verbalize_numbers=False), random.Random(5))
    assert len(hyp) == len(ref) and hyp != ref
    for a, b in zip(hyp, ref, strict=True):
        if a != b:
            assert core.toneless(a) == core.toneless(b)


def test_a_corrector_is_scored_by_cer_after_its_correction():
    ref, hyp = "他们今天去了北京。", "她们今天去了背景，"
    perfect = scoring.score_correction(hyp, ref, ref)
    assert perfect["cer_after"] == 0 and perfect["cer_before"] == pytest.approx(4 / 9)
    assert perfect["cer_before_nopunct"] == pytest.approx(3 / 8) and perfect["cer_after_nopunct"] == 0
    assert scoring.score_correction(hyp, ref, hyp)["cer_after"] == pytest.approx(4 / 9)  # no correction
    pairs = json.dumps([{"wrong": "背景", "right": "北京", "hyp_start": 6}], ensure_ascii=False)
    half = scoring.score_correction(hyp, ref, f"```json\n{pairs}\n```", "json")
    assert half["json_valid"] == 1 and half["cer_after"] == pytest.approx(2 / 9)
    moved = json.dumps([{"wrong": "她们", "right": "他们", "hyp_start": 40}], ensure_ascii=False)  # offset off: found
    assert scoring.score_correction(hyp, ref, moved, "json")["cer_after"] == pytest.approx(3 / 9)
    invalid = scoring.score_correction(hyp, ref, "我认为应该改成北京", "json")
    assert invalid["json_valid"] == 0 and invalid["cer_after"] == invalid["cer_before"]
    clash = [{"wrong": "今天去", "right": "X", "hyp_start": 2}, {"wrong": "天去了", "right": "Y", "hyp_start": 3}]
    assert scoring.apply_predicted_pairs(hyp, clash) == "她们X了背景，"  # the overlapping second is left out


def test_a_looped_transcript_compresses_far_better_than_its_reference(zh_docs):
    ref = zh_docs[0]
    looped = ref[:40] + "死亡得心" * 60
    assert core.compression_ratio(looped) / core.compression_ratio(ref) > 2
    noisy = core.noisy_hypothesis(ref, core.Channel(), random.Random(0))
    assert core.compression_ratio(noisy) / core.compression_ratio(ref) < 1.2


# -- issue 33, points 10, 11 -------------------------------------------------------------------------


def test_the_channel_reads_numbers_as_speech_does():
    """A year is read digit by digit and a percentage as 百分之..., as cn2an.transform (the speech
    path's reading) does; a run of more than 16 digits is no error."""
    quiet = core.Channel(homophone=0, deletion=0, insertion=0, punctuation=0, verbalize_numbers=True)
    hyp = core.noisy_hypothesis("2024年的增长是5%。", quiet, random.Random(0))
    assert hyp == "二零二四年的增长是百分之五。"
    long_run = "最大值是9223372036854775807。"
    assert core.noisy_hypothesis(long_run, quiet, random.Random(0))  # no ValueError: 超出数据范围
    pairs = core.pairs_between(core.noisy_hypothesis(long_run, quiet, random.Random(0)), long_run, "zh")
    assert core.apply_pairs(core.noisy_hypothesis(long_run, quiet, random.Random(0)), pairs) == long_run


@pytest.mark.parametrize(("hyp", "ref", "kind"), [
    ("to day", "today", "lexical"),  # a word boundary is not a number form
    ("three", "3", "itn"),
    ("twenty five", "25", "itn"),
    ("five percent", "5%", "itn"),
    ("one hundred and twenty", "120", "itn"),
    ("three", "4", "lexical"),
    ("an", "1", "lexical"),
])
def test_pair_types_of_english_numbers_and_word_boundaries(hyp, ref, kind):
    assert core.pair_type(hyp, ref) == kind


# -- issue 33, point 20: punctuation P/R/F1 and ITN accuracy (spec 5c, 5d), known answers ------------


@pytest.mark.parametrize(("output", "counts"), [
    ("今天，下雨了。", (2, 2, 2)),
    ("今天下雨了。", (1, 1, 2)),  # the comma missed: recall 1/2, precision 1/1
    ("今天。下雨了，", (0, 2, 2)),  # both marks in place but the wrong ones
    ("今天，下，雨了。", (2, 3, 2)),  # one mark too many: precision 2/3
    ("明天，刮风了。", (2, 2, 2)),  # the words wrong, the marks right
])
def test_punctuation_counts_on_known_cases(output, counts):
    assert scoring.punctuation_counts(output, "今天，下雨了。") == counts


def test_an_itn_pair_is_right_only_when_the_correction_writes_the_reference_form():
    hyp, ref = "二零二四年发布了。", "2024年发布了。"
    (pair,) = core.pairs_between(hyp, ref, "zh")
    assert pair.type == "itn"
    right = scoring.score_correction(hyp, ref, ref, pairs=[pair])
    assert (right["itn_right"], right["itn_pairs"]) == (1, 1)
    for wrong in (hyp, "2025年发布了。", "202年发布了。"):
        assert scoring.score_correction(hyp, ref, wrong, pairs=[pair])["itn_right"] == 0, wrong


@pytest.mark.parametrize(("text", "spoken"), [  # review of issue 33: what cn2an alone misreads
    ("2024-01-05", "二零二四年一月五日"),
    ("2024/1/5", "二零二四年一月五日"),
    ("138-0013-8000", "一三八零零一三八零零零"),
    ("13800138000", "一三八零零一三八零零零"),
    ("007", "零零七"),
    ("1,000,000", "一百万"),
    ("12,345.6元", "一万二千三百四十五点六元"),
    ("50-60%", "五十到百分之六十"),
    ("0.12345678901234567", "零点一二三四五六七八九零一二三四五六七"),
])
def test_numbers_are_read_as_speech_says_them(text, spoken):
    assert core.read_numbers_aloud(text) == spoken
