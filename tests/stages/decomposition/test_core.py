"""The decomposition rule (spec 3.1, worked examples and section 5 invariants) and the curriculum."""

from __future__ import annotations

import numpy as np
import pytest

from stages.decomposition.core import decompose, odds_for, schedule

WORKED = {  # spec 3.1, deterministic, min 256, max 8192
    100: ([], 100),
    1000: ([512, 256], 232),
    5000: ([4096, 512, 256], 136),
    8193: ([8192], 1),
    20000: ([8192, 8192, 2048, 1024, 512], 32),
}


@pytest.mark.parametrize("length", sorted(WORKED))
def test_worked_examples(length):
    pieces, dropped = decompose(length)
    assert ([p.size for p in pieces], dropped) == WORKED[length]


def test_plus_one_worked_example():
    pieces, dropped = decompose(1000, plus_one=True)
    assert [p.size for p in pieces] == [513, 257] and dropped == 230
    assert [p.bucket for p in pieces] == [9, 8]


def test_invariants():
    for length in list(range(0, 20000, 37)) + [256, 8192, 16384, 2**15 - 1, 123_456]:
        pieces, dropped = decompose(length)
        # Powers of two in range, matching the bucket; contiguous from offset 0; tail < 2^min.
        at = 0
        for p in pieces:
            assert p.size == 2**p.bucket and 8 <= p.bucket <= 13
            assert p.offset == at
            at += p.size
        assert at + dropped == length and dropped < 256
        if length < 2**14:  # below 2^(max+1): the sizes are the set bits of l that are >= 2^min
            bits = [1 << b for b in range(13, 7, -1) if length & (1 << b)]
            assert [p.size for p in pieces] == bits


def test_random_overflow_spreads_tokens_evenly_over_buckets():
    rng = np.random.default_rng(0)
    tokens = np.zeros(14)
    for _ in range(1000):
        pieces, _ = decompose(200_000, rng=rng)
        for p in pieces[:-6]:  # the overflow pieces (the tail follows the binary rule)
            tokens[p.bucket] += p.size
    share = tokens[8:] / tokens[8:].sum()
    assert np.all(np.abs(share - 1 / 6) < 0.03), share


def test_schedule_batches_are_single_bucket_of_exactly_the_budget():
    sizes = {8: 4096, 9: 2048, 10: 1024, 11: 512, 12: 256, 13: 128}
    budget = 2**16
    steps, left = schedule(sizes, odds_for("grow_p2", 8, 13), cycles=8, budget=budget, seed=1)
    for s in steps:
        assert len(s.sequences) * 2**s.bucket == budget
    # Every sequence of every bucket used at most once overall, and all but partial batches used.
    for i, n in sizes.items():
        used = [q for s in steps if s.bucket == i for q in s.sequences]
        assert len(used) == len(set(used)) and len(used) + left[i] == n


def test_schedule_is_deterministic_and_grows_within_each_cycle():
    sizes = {8: 8192, 9: 4096, 10: 2048, 11: 1024, 12: 512, 13: 256}
    a, _ = schedule(sizes, odds_for("grow_p2", 8, 13), cycles=4, budget=2**15, seed=7)
    b, _ = schedule(sizes, odds_for("grow_p2", 8, 13), cycles=4, budget=2**15, seed=7)
    assert [(s.bucket, s.sequences) for s in a] == [(s.bucket, s.sequences) for s in b]
    for c in range(4):
        buckets = [s.bucket for s in a if s.cycle == c]
        half = len(buckets) // 2
        assert np.mean(buckets[:half]) < np.mean(buckets[half:])  # short first, long last


def test_bucket_frequencies_match_the_odds_while_all_are_non_empty():
    from scipy.stats import chisquare

    sizes = {i: 2000 * 2**13 // 2**i for i in range(8, 14)}  # 2,000 batches each: none runs dry early
    odds = odds_for("grow_linear", 8, 13)
    steps, _ = schedule(sizes, odds, cycles=1, budget=2**13, seed=3)
    first = [s.bucket for s in steps[:3000]]
    counts = np.array([first.count(i) for i in range(8, 14)])
    expected = np.array([odds[i] for i in range(8, 14)])
    expected = expected / expected.sum() * len(first)
    assert chisquare(counts, expected).pvalue > 0.001


def test_odds_by_name():
    assert odds_for("grow_p2", 8, 13) == {8: 32.0, 9: 16.0, 10: 8.0, 11: 4.0, 12: 2.0, 13: 1.0}
    assert odds_for("grow_linear", 8, 13)[8] == 6.0 and odds_for("uniform", 8, 13)[13] == 1.0
    with pytest.raises(ValueError, match="custom odds need 6 values"):
        odds_for("custom", 8, 13, [1, 2])
