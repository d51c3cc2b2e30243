"""The streaming packer against the rule written out whole: concatenate every document (EOS after
each), cut windows of L, and read each window's spans off the documents' global bounds. The
oracle below is that rule as one pass over the whole order; it shares no code with the packer."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.blocks.packing import StreamPacker, pack


def whole_order_rule(lengths: list[int], L: int, eos: int | None, drop_last: bool):
    """(contexts as [(doc, start, end, offset)], tail docs, cut) from global bounds."""
    bounds, at = [], 0
    for d, n in enumerate(lengths):
        n += eos is not None
        bounds.append((d, at, at + n))
        at += n
    n_ctx = at // L if drop_last else -(-at // L)
    limit = n_ctx * L
    contexts = [[] for _ in range(n_ctx)]
    tail, cut = [], None
    for d, a, b in bounds:
        if a >= limit:
            tail.append(d)
            continue
        if b > limit:
            cut = (d, limit - a, b - a)
        for c in range(a // L, n_ctx):
            if c * L >= b:
                break
            lo, hi = max(a, c * L), min(b, (c + 1) * L)
            contexts[c].append((d, lo - c * L, hi - c * L, lo - a))
    return contexts, tail, cut


def _docs(lengths: list[int], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 1000, size=n).astype(np.int32) for n in lengths]


@settings(max_examples=300, deadline=None)
@given(lengths=st.lists(st.integers(0, 40), max_size=30), L=st.integers(1, 17), eos=st.sampled_from([None, 0]),
       drop_last=st.booleans())
def test_stream_packer_gives_the_whole_order_rule(lengths, L, eos, drop_last):
    docs = _docs(lengths, len(lengths))
    packer = StreamPacker(L, eos, drop_last, pad_id=7)
    out = []
    for d, t in enumerate(docs):
        out += packer.add(d, t)
    last, tail = packer.finish()
    out += last
    want, want_tail, want_cut = whole_order_rule(lengths, L, eos, drop_last)
    assert [[(s["doc"], s["start"], s["end"], s["doc_tok_offset"]) for s in spans] for _, spans in out] == want
    assert tail.docs == want_tail and tail.cut == want_cut
    stream = np.concatenate([np.append(t, eos) if eos is not None else t for t in docs] + [np.zeros(0)])
    for c, (row, _) in enumerate(out):  # the tokens are the stream's window, padded at the end
        assert row.dtype == np.int32 and len(row) == L
        window = stream[c * L:(c + 1) * L]
        assert row[: len(window)].tolist() == window.tolist()
        assert (row[len(window):] == 7).all()
    seen: dict[int, int] = {}
    for _, spans in out:
        for d in {s["doc"] for s in spans}:
            seen[d] = seen.get(d, 0) + 1
    assert tail.straddling == sum(1 for v in seen.values() if v > 1)


def test_pack_is_the_stream_over_an_order():
    docs = _docs([5, 0, 9, 3, 12, 1], 3)
    order = np.array([4, 0, 2, 5, 1, 3])
    p = pack(order, docs, 8, 0, drop_last=True)
    want, tail, cut = whole_order_rule([len(docs[d]) for d in order], 8, 0, True)
    assert [[(s["doc"], s["start"], s["end"], s["doc_tok_offset"]) for s in sp] for sp in p.spans] == \
        [[(int(order[d]), a, b, o) for d, a, b, o in ctx] for ctx in want]
    assert p.docs_in_tail.tolist() == [int(order[d]) for d in tail]
    assert p.cut == ((int(order[cut[0]]),) + cut[1:] if cut else None)


def test_a_killed_tasks_spill_is_removed_by_the_next_and_a_live_ones_is_kept(tmp_path, monkeypatch):
    """A group task killed mid-spill leaves its scratch directory; the next one on the machine
    removes it, never one whose process still runs, whatever its pid namespace: a live task holds
    the directory's lock, a dead one's lock is free."""
    import subprocess
    import sys
    import tempfile

    from stages.blocks.spill import GroupScratch

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    holder = (
        "import sys, tempfile, time\n"
        f"tempfile.tempdir = {str(tmp_path)!r}\n"
        "from stages.blocks.spill import GroupScratch\n"
        "with GroupScratch() as s:\n"
        "    s.rows('contexts', 4, 'int32').append(__import__('numpy').arange(4))\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60 if sys.argv[1] == 'live' else 0.1)\n"
        "    __import__('os')._exit(0)  # dies without removing its directory\n"
    )
    dead = subprocess.run([sys.executable, "-c", holder, "dead"], capture_output=True, text=True)
    assert "ready" in dead.stdout, dead.stderr
    (dead_dir,) = tmp_path.iterdir()
    live = subprocess.Popen([sys.executable, "-c", holder, "live"], stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline().strip() == "ready"
        (live_dir,) = [d for d in tmp_path.iterdir() if d != dead_dir]
        with GroupScratch() as scratch:
            spill = scratch.rows("contexts", 4, "int32")
            spill.append(np.arange(4), {"a": 1})
            spill.append(np.arange(4, 8), None)
            assert spill.row(1).tolist() == [4, 5, 6, 7] and spill.payload(0) == {"a": 1}
            assert not dead_dir.exists() and live_dir.exists()
            (ours,) = [d for d in tmp_path.iterdir() if d != live_dir]
        assert not ours.exists() and live_dir.exists()
    finally:
        live.kill()
        live.wait()
