"""Dataset Decomposition on arrays: the binary decomposition rule and the VSL curriculum schedule
(spec: ../shared/specs/dataset-decomposition.md).

A document of l tokens is cut, from its start, into pieces whose sizes are the powers of two of l's
binary expansion, largest first; a piece of 2^i tokens goes to bucket D_i. Training then draws one
bucket per step with a constant token budget, following a curriculum over the buckets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CURRICULA = {  # odds for D_min..D_max, shortest first [paper]; Grow-P100 values are UNVERIFIED
    "uniform": lambda n: [1.0] * n,
    "grow_linear": lambda n: [float(n - j) for j in range(n)],
    "grow_p2": lambda n: [2.0 ** (n - 1 - j) for j in range(n)],
    "grow_p100": lambda n: [100.0 ** (n - 1 - j) for j in range(n)],
}


@dataclass(frozen=True)
class Piece:
    offset: int  # first token, in the document
    size: int  # tokens stored (2^i, or 2^i + 1 in the "+1" convention)
    bucket: int  # i


def decompose(length: int, min_exp: int = 8, max_exp: int = 13, plus_one: bool = False,
              rng: np.random.Generator | None = None) -> tuple[list[Piece], int]:
    """Pieces of a document of ``length`` tokens and the number of tail tokens dropped.

    Deterministic by default: the binary expansion, largest piece first; parts above 2^max_exp are
    cut into 2^max_exp pieces [olmo]. With ``rng`` (the reference code's ``randomize``), while the
    remainder exceeds the largest bucket, a piece size 2^i is drawn with P(i) proportional to
    2^(max-i), i.e. equal expected tokens per bucket. ``plus_one`` stores 2^i + 1 tokens per piece,
    so that after the next-token shift a sample has exactly 2^i inputs and targets [code]."""
    extra = 1 if plus_one else 0
    pieces: list[Piece] = []
    at = 0
    left = length
    sizes = np.arange(min_exp, max_exp + 1)
    probs = 2.0 ** (max_exp - sizes)
    probs = probs / probs.sum()
    while left - extra >= 2**min_exp:
        if left - extra > 2**max_exp:
            i = int(rng.choice(sizes, p=probs)) if rng is not None else max_exp
        else:
            i = int(np.floor(np.log2(left - extra)))
        size = 2**i + extra
        pieces.append(Piece(at, size, i))
        at += size
        left -= size
    return pieces, left


@dataclass
class Step:
    step: int
    cycle: int
    bucket: int
    sequences: list[int]  # indexes into the bucket's sequence list


def schedule(bucket_sizes: dict[int, int], odds: dict[int, float], cycles: int, budget: int,
             seed: int = 0) -> tuple[list[Step], dict[int, int]]:
    """The paper's Algorithm 1: each bucket's sequences, shuffled with the seed, are split into
    ``cycles`` equal parts; in every cycle, while some part still holds a full batch, draw bucket i
    with probability o_i / sum(o_j of buckets with a batch left) and take its next b / 2^i sequences.
    Returns the steps and, per bucket, the sequences left out (partial batches, dropped [ours]).
    The same seed gives the same schedule on every data-parallel rank."""
    rng = np.random.default_rng(seed)
    buckets = sorted(bucket_sizes)
    for i in buckets:
        if budget % (2**i):
            raise ValueError(f"the token budget {budget} is not a multiple of 2^{i}")
    order = {i: rng.permutation(bucket_sizes[i]) for i in buckets}
    batch = {i: budget // 2**i for i in buckets}
    parts = {i: np.array_split(order[i], cycles) for i in buckets}
    steps: list[Step] = []
    left_out = {i: 0 for i in buckets}
    for c in range(cycles):
        queues = {i: parts[i][c] for i in buckets}
        n_batches = {i: len(queues[i]) // batch[i] for i in buckets}
        for i in buckets:
            left_out[i] += len(queues[i]) - n_batches[i] * batch[i]
        taken = {i: 0 for i in buckets}
        while True:
            live = [i for i in buckets if taken[i] < n_batches[i] and odds.get(i, 0) > 0]
            if not live:
                break
            p = np.array([odds[i] for i in live], dtype=float)
            i = live[int(rng.choice(len(live), p=p / p.sum()))]
            k = taken[i]
            steps.append(Step(len(steps), c, i, queues[i][k * batch[i]:(k + 1) * batch[i]].tolist()))
            taken[i] += 1
        for i in buckets:  # a bucket with zero odds is never drawn: its sequences are left out
            left_out[i] += (n_batches[i] - taken[i]) * batch[i]
    return steps, left_out


def odds_for(curriculum: str, min_exp: int, max_exp: int, custom: list[float] | None = None) -> dict[int, float]:
    n = max_exp - min_exp + 1
    if curriculum == "custom":
        if custom is None or len(custom) != n:
            raise ValueError(f"custom odds need {n} values, one per bucket {min_exp}..{max_exp}")
        values = custom
    else:
        values = CURRICULA[curriculum](n)
    return {min_exp + j: float(v) for j, v in enumerate(values)}
