"""GATEAU ranking, spec gateau.md section 6, with the spec's deterministic "copy LM": a response token
is likely iff it occurs in the model's visible window (the short model sees the last w tokens, the
long one everything). Contexts are random token ids; answers are copied from early or late spans."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stages.gateau import core

V = 5000  # vocabulary of the copy LM


def copy_ppl(prefix: list[int], response: list[int], window: int | None) -> float:
    seq = prefix + response
    nll = []
    for k, tok in enumerate(response):
        pos = len(prefix) + k
        seen = seq[max(0, pos - window):pos] if window else seq[:pos]
        nll.append(-math.log(0.9 if tok in seen else 1 / V))
    return math.exp(sum(nll) / len(nll))


def sample(rng, answer_at: str, n_ctx: int = 1024, seg: int = 128):
    ctx = rng.integers(10, V, n_ctx).tolist()
    start = int(rng.integers(0, 100)) if answer_at == "early" else n_ctx - 60
    response = ctx[start:start + 40]
    instruction = [1, 2, 3]
    segs = [ctx[j * seg:(j + 1) * seg] for j in range(n_ctx // seg)]
    return ctx, instruction, response, segs


def score_pool(n: int, short_window: int = 256, attention: str = "uniform", seed: int = 0):
    rng = np.random.default_rng(seed)
    ids, short, long_, seg_ppl, seg_att = [], [], [], [], []
    for i in range(n):
        where = "early" if i % 2 == 0 else "late"
        ctx, instr, resp, segs = sample(rng, where)
        ids.append(f"{where}-{i:03d}")
        short.append(copy_ppl(ctx + instr, resp, short_window))
        long_.append(copy_ppl(ctx + instr, resp, None))
        ppl = [copy_ppl(s + instr, resp, None) for s in segs]
        seg_ppl.append(ppl)
        if attention == "uniform":
            seg_att.append([1.0 / len(ctx)] * len(segs))
        else:  # all attention on the least important segment
            a = np.zeros(len(segs))
            a[int(np.argmax(ppl))] = 1.0 / 128
            seg_att.append(a.tolist())
    return ids, np.array(short), np.array(long_), seg_ppl, seg_att


def test_an_answer_far_back_ranks_above_one_inside_the_short_window():
    ids, short, long_, sp, sa = score_pool(20)
    r = core.rank(ids, short, long_, sp, sa, core.SelectOptions(alpha=0.8, ratio=0.5))
    early = [r.rank[i] for i, x in enumerate(ids) if x.startswith("early")]
    late = [r.rank[i] for i, x in enumerate(ids) if x.startswith("late")]
    assert max(early) < min(late)
    assert all(r.selected[i] == x.startswith("early") for i, x in enumerate(ids))


def test_a_short_window_that_covers_everything_drives_hmg_to_zero():
    ids, short, long_, sp, sa = score_pool(10, short_window=10**6)
    r = core.rank(ids, short, long_, sp, sa, core.SelectOptions())
    assert np.allclose(r.hmg_raw, 0)


def test_hmg_is_invariant_to_a_constant_added_to_one_models_ppls_and_to_sample_order():
    ids, short, long_, sp, sa = score_pool(12)
    o = core.SelectOptions()
    a = core.rank(ids, short, long_, sp, sa, o)
    b = core.rank(ids, short, long_ + 7.5, sp, sa, o)
    assert np.allclose(a.hmg, b.hmg)
    perm = np.random.default_rng(1).permutation(len(ids))
    c = core.rank([ids[i] for i in perm], short[perm], long_[perm], [sp[i] for i in perm], [sa[i] for i in perm], o)
    by_id = dict(zip(c.ids, c.score, strict=True))
    assert all(by_id[i] == pytest.approx(s) for i, s in zip(a.ids, a.score, strict=True))
    assert dict(zip(c.ids, c.rank.tolist(), strict=True)) == dict(zip(a.ids, a.rank.tolist(), strict=True))


def test_cam_is_zero_when_attention_follows_importance_and_large_when_it_avoids_it():
    imp = core.importance(np.array([3.0, 30.0, 300.0, 12.0]))
    assert core.cas(imp, imp * 0.01) == pytest.approx(1.0)  # renormalised attention equal to importance
    perm = [2, 0, 3, 1]
    att = np.array([0.1, 0.2, 0.3, 0.4])
    assert core.cas(imp[perm], att[perm]) == pytest.approx(core.cas(imp, att))  # permutation invariant
    ids, short, long_, sp, uniform = score_pool(8)
    _, _, _, _, avoid = score_pool(8, attention="avoid")
    o = core.SelectOptions(pool_norm="minmax")
    r_uniform = core.rank(ids, short, long_, sp, uniform, o)
    r_avoid = core.rank(ids, short, long_, sp, avoid, o)
    assert (r_avoid.cam_raw > r_uniform.cam_raw).all() and (r_avoid.cam_raw > 0.99).all()


def test_alpha_one_and_zero_give_the_hmg_only_and_cam_only_rankings():
    ids, short, long_, sp, sa = score_pool(15, attention="avoid", seed=3)
    sa = [list(np.array(a) + np.random.default_rng(k).random(len(a)) * 1e-3) for k, a in enumerate(sa)]
    r1 = core.rank(ids, short, long_, sp, sa, core.SelectOptions(alpha=1.0))
    r0 = core.rank(ids, short, long_, sp, sa, core.SelectOptions(alpha=0.0))
    by_hmg = sorted(range(15), key=lambda i: (-r1.hmg[i], ids[i]))
    by_cam = sorted(range(15), key=lambda i: (-r0.cam[i], ids[i]))
    assert [int(r1.rank[i]) for i in by_hmg] == list(range(1, 16))
    assert [int(r0.rank[i]) for i in by_cam] == list(range(1, 16))


@pytest.mark.parametrize("n,ratio", [(30, 0.1), (10, 0.3), (7, 0.5), (1, 0.1), (9, 1.0)])
def test_exactly_ceil_k_n_selected_deterministically(n, ratio):
    ids, short, long_, sp, sa = score_pool(n)
    o = core.SelectOptions(ratio=ratio)
    a = core.rank(ids, short, long_, sp, sa, o)
    b = core.rank(ids, short, long_, sp, sa, o)
    assert int(a.selected.sum()) == math.ceil(round(ratio * n, 9))
    assert a.rank.tolist() == b.rank.tolist() and sorted(a.rank.tolist()) == list(range(1, n + 1))


def test_ties_break_by_id_and_degenerate_pools():
    ids = ["b", "a", "c"]
    r = core.rank(ids, np.ones(3), np.ones(3), [[], [], []], [[], [], []], core.SelectOptions(ratio=0.3))
    assert r.rank.tolist() == [2, 1, 3] and r.selected.tolist() == [False, True, False]  # all equal: by id
    assert np.allclose(r.hmg_raw, 0)  # min = max -> Norm = 0


def test_split_messages_reference_rule():
    msgs = [{"role": "user", "content": "doc part 1\n\ndoc part 2\n\nWhat is it?"},
            {"role": "assistant", "content": "A"}]
    assert core.split_messages(msgs) == ("doc part 1\n\ndoc part 2", "What is it?", "A")
    assert core.split_messages([{"role": "user", "content": "no blank line"}, {"role": "assistant", "content": "x"}]) \
        == ("", "no blank line", "x")
    assert core.split_messages([{"role": "user", "content": "q"}]) is None


def test_when_hmg_ties_cam_decides():
    """Every sample has the same two perplexities (HMG ties): the ranking is CAM's order, at the
    paper's alpha = 0.8, whatever the pool normalisation."""
    ids, short, long_, sp, _ = score_pool(10)
    short, long_ = np.full(10, 40.0), np.full(10, 25.0)
    rng = np.random.default_rng(5)
    att = [rng.random(len(s)).tolist() for s in sp]
    for pool_norm in ("softmax", "minmax", "rank"):
        r = core.rank(ids, short, long_, sp, att, core.SelectOptions(alpha=0.8, pool_norm=pool_norm))
        assert np.ptp(r.hmg) == 0 and len(set(np.round(r.cam_raw, 12))) == 10
        by_cam = sorted(range(10), key=lambda i: (-r.cam_raw[i], ids[i]))
        assert [int(r.rank[i]) for i in by_cam] == list(range(1, 11))


def test_both_terms_enter_the_pool_normalisation_on_one_scale():
    """HMG's raw values lie in [-1, 1] and CAM's in [0, 1], with ranges that differ by far more in a
    given pool: scaled to [0, 1] each, both reach the softmax with a range of 1, and their spreads
    after it are recorded. Without the scaling (the code's way) HMG has the larger spread."""
    ids, short, long_, sp, sa = score_pool(16, attention="avoid", seed=2)
    sa = [list(np.array(a) + np.random.default_rng(k).random(len(a)) * 1e-2) for k, a in enumerate(sa)]
    scaled = core.rank(ids, short, long_, sp, sa, core.SelectOptions())
    raw = core.rank(ids, short, long_, sp, sa, core.SelectOptions(term_scale="none"))
    assert np.ptp(scaled.hmg_raw) > 2 * np.ptp(scaled.cam_raw)  # raw, the two ranges differ
    s, r = scaled.spreads(), raw.spreads()
    assert set(s) >= {"hmg_std", "cam_std", "hmg_range", "cam_range", "cam_to_hmg_std_ratio"}
    # on one scale the two terms' log-softmax ranges are both exactly 1
    for x in (scaled.hmg, scaled.cam):
        assert np.log(x).max() - np.log(x).min() == pytest.approx(1.0)
    assert np.log(raw.hmg).max() - np.log(raw.hmg).min() == pytest.approx(np.ptp(raw.hmg_raw))
    assert r["cam_to_hmg_std_ratio"] < s["cam_to_hmg_std_ratio"]
