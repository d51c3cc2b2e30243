"""Untie the Knots, spec section 5, on real documents (Paul Graham, KJV chapters, Python docs)
tokenised with SmolLM2: every invariant is checked from the output tokens and labels, with the
expected loss mask computed from the token ids, not from the packer's own bookkeeping."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy.stats import binomtest, chisquare
from tokenizers import Tokenizer

from gpu_jobs.models import eos_token_id, tokenizer_path
from stages.utk import core, parser
from stages.utk.stages import UtkParams, build_markers


@pytest.fixture(scope="module")
def setup(real_docs):
    base = Tokenizer.from_file(str(tokenizer_path("smollm2")))
    eos = eos_token_id(base)
    encs = base.encode_batch_fast([d["text"] for d in real_docs], add_special_tokens=False)
    docs = [np.array([*e.ids, eos], dtype=np.int32) for e in encs]
    docs = [d for d in docs if not (d[:-1] == eos).any()]
    order = np.random.default_rng(0).permutation(len(docs))
    docs = [docs[k] for k in order]
    special = Tokenizer.from_file(str(tokenizer_path("smollm2")))
    markers, _ = build_markers(special, UtkParams())
    labels = core.LabelTokenizer(lambda s: base.encode(s, add_special_tokens=False).ids)
    return docs, markers, labels, eos, base


def _samples(setup, **kw):
    docs, markers, labels, _, _ = setup
    cfg = core.KnotConfig(**{"length": 2048, "seed": 47, **kw})
    return list(core.pack_samples(docs, cfg, markers, labels)), cfg


def _io(s: core.Sample):
    return s.tokens[:-1], s.tokens[1:]


@pytest.mark.parametrize("preserve_order", [True, False])
def test_documents_read_back_exactly_from_tokens_and_labels(setup, preserve_order):
    docs, markers, _, eos, _ = setup
    samples, cfg = _samples(setup, preserve_order=preserve_order)
    assert samples and all(len(s.tokens) == cfg.length + 1 for s in samples)
    got = parser.documents_from_samples((_io(s) for s in samples), markers, eos)
    n_whole = samples[-1].pieces[-1].doc + (samples[-1].pieces[-1].end == len(docs[samples[-1].pieces[-1].doc]))
    assert len(got) == n_whole
    assert Counter(g.tobytes() for g in got) == Counter(d.tobytes() for d in docs[:n_whole])


def test_every_piece_once_order_preserved_and_one_backtrace_right_after_the_last_chunk(setup):
    docs, markers, _, eos, _ = setup
    samples, _ = _samples(setup)
    n_split = 0
    for s in samples:
        parsed = parser.parse_sample(*_io(s), markers, eos)
        # each piece exactly once: the chunks of a piece tile its source span
        by_piece: dict[int, list[dict]] = {}
        for c in s.chunks:
            by_piece.setdefault(c["piece"], []).append(c)
        for p_i, cs in by_piece.items():
            cs_sorted = sorted(cs, key=lambda c: c["chunk_idx"])
            piece = s.pieces[p_i]
            assert [c["chunk_idx"] for c in cs_sorted] == list(range(piece.n_chunks))
            assert cs_sorted[0]["src_start"] == piece.start and cs_sorted[-1]["src_end"] == piece.end
            assert all(a["src_end"] == b["src_start"] for a, b in zip(cs_sorted, cs_sorted[1:], strict=False))
            assert all(c["src_end"] > c["src_start"] for c in cs)  # no empty chunk
            starts = [c["out_start"] for c in cs_sorted]
            assert starts == sorted(starts)  # PreserveOrder
        for d in parsed:
            if d.labels:
                n_split += 1
                assert d.backtrace_at == d.last_chunk_end  # immediately after its last chunk (and no knot between)
                assert d.chunk_starts == sorted(d.chunk_starts)
    assert n_split > 100


def test_knot_counts_and_pairing(setup):
    _, markers, _, _, _ = setup
    samples, _ = _samples(setup)
    for s in samples:
        if not s.knotted:
            continue
        toks = s.tokens
        h_of = Counter()
        for p in s.pieces:
            h_of[p.n_chunks] += 1
        for j, ids in markers.tail.items():
            (tail_id,) = ids
            (head_id,) = markers.head[j + 1]
            expected = sum(c for h, c in h_of.items() if h >= j + 1 and h > 1)
            assert int((toks == tail_id).sum()) == expected
            assert int((toks == head_id).sum()) == expected
        for c in s.chunks:  # each split piece's h_(j+1) comes after its t_j
            if c["n_chunks"] > 1 and c["chunk_idx"] > 0:
                (head_id,) = markers.head[c["chunk_idx"] + 1]
                before = toks[:c["out_start"]]
                assert head_id in before.tolist()


def _expected_mask(tokens: np.ndarray, markers: core.Markers) -> np.ndarray:
    """Spec step 8 from the token ids alone (special-token markers, one id each)."""
    knots = {i for v in list(markers.head.values()) + list(markers.tail.values()) for i in v}
    (d_open,), (d_close,), (s_open,), (s_close,) = (markers.label_open, markers.label_close, markers.bt_open,
                                                    markers.bt_close)
    in_header = np.zeros(len(tokens), dtype=bool)
    inside = False
    for i, t in enumerate(tokens.tolist()):
        if t == d_open:
            inside = True
        in_header[i] = inside
        if t == d_close:
            inside = False
    x, y = tokens[:-1], tokens[1:]
    zero = (np.isin(x, list(knots)) | np.isin(y, list(knots)) | in_header[:-1] | in_header[1:] | (y == s_open)
            | (x == s_close))
    return (~zero).astype(np.uint8)


def test_loss_mask_is_zero_exactly_where_step_8_says(setup):
    _, markers, _, _, _ = setup
    samples, _ = _samples(setup)
    for s in samples:
        mask = core.loss_mask(s.roles) if s.knotted else np.ones(len(s.tokens) - 1, dtype=np.uint8)
        np.testing.assert_array_equal(mask, _expected_mask(s.tokens, markers))
        if s.knotted:
            (sep,) = markers.bt_sep
            (close,) = markers.bt_close
            y = s.tokens[1:]
            assert mask[y == sep].all() and mask[y == close].all()  # separators and </S> are trained


def test_knotted_share_is_p_and_chunk_counts_follow_the_odds(setup):
    docs, _, _, _, _ = setup
    samples, cfg = _samples(setup, length=512, p=0.3, chunk_odds={2: 0.25, 3: 0.75})
    k = sum(s.knotted for s in samples)
    assert len(samples) > 1000
    assert binomtest(k, len(samples), 0.3).pvalue > 1e-3
    # pieces that were not cut by the sample's end and are long enough always take the drawn h
    counts = Counter(p.n_chunks for s in samples if s.knotted for p in s.pieces[:-1]
                     if p.end - p.start >= cfg.min_split and p.n_chunks > 1)
    n = counts[2] + counts[3]
    assert n > 200 and chisquare([counts[2], counts[3]], [0.25 * n, 0.75 * n]).pvalue > 1e-3


def test_cut_points_are_uniform(setup):
    samples, _ = _samples(setup, length=4096, chunk_odds={2: 1.0})
    pieces = [(c["src_start"], s.pieces[c["piece"]]) for s in samples for c in s.chunks if c["chunk_idx"] == 1]
    u = np.array([(at - p.start) / (p.end - p.start) for at, p in pieces])
    assert len(u) > 200
    hist, _ = np.histogram(u, bins=5, range=(0, 1))
    assert chisquare(hist).pvalue > 1e-3


def test_same_seed_same_bytes_other_seed_differs(setup):
    a, _ = _samples(setup, seed=3)
    b, _ = _samples(setup, seed=3)
    c, _ = _samples(setup, seed=4)
    assert [s.tokens.tobytes() for s in a] == [s.tokens.tobytes() for s in b]
    assert [s.tokens.tobytes() for s in a] != [s.tokens.tobytes() for s in c]


def test_gate_off_is_plain_packing(setup):
    docs, _, _, _, _ = setup
    samples, cfg = _samples(setup, p=0.0)
    stream = np.concatenate(docs)
    for s in samples:
        start = s.index * (cfg.length + 1)
        np.testing.assert_array_equal(s.tokens, stream[start:start + cfg.length + 1])
        assert not s.knotted and not s.roles.any()


def test_text_markers_read_back_too(setup):
    docs, _, labels, eos, base = setup
    text_tok = Tokenizer.from_file(str(tokenizer_path("smollm2")))
    markers, rows = build_markers(text_tok, UtkParams(markers="text"))
    assert all(len(r["token_ids"]) > 1 for r in rows)  # several ordinary tokens each
    clean = [d for d in docs[:400] if not any(_contains(d, ids) for ids, _, _ in markers.patterns())]
    cfg = core.KnotConfig(length=2048, seed=1)
    samples = list(core.pack_samples(clean, cfg, markers, labels))
    got = parser.documents_from_samples((_io(s) for s in samples), markers, eos)
    assert Counter(g.tobytes() for g in got) == Counter(d.tobytes() for d in clean[:len(got)])
    assert sum(s.knotted for s in samples) > 0


def _contains(d: np.ndarray, ids: tuple[int, ...]) -> bool:
    from stages.utk.stages import contains_pattern

    return contains_pattern(d, ids)


def test_worked_example_by_hand():
    """One sample of two documents, the first cut in two: the layout the module docstring gives."""
    mk = core.Markers(head={2: (902,)}, tail={1: (901,)}, label_open=(903,), label_close=(904,),
                      bt_open=(905,), bt_sep=(906,), bt_close=(907,))
    doc_a = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0], dtype=np.int32)
    doc_b = np.array([11, 12, 0], dtype=np.int32)
    labels = core.LabelTokenizer(lambda s: [500 + ord(s[0])])  # one-token labels for the example
    over = core.marker_overhead(mk, [(1,), (2,)])
    assert over == 2 * 3 + 2 + (1 + 2 + 1 + 1)  # headers, knots, backtrace
    cfg = core.KnotConfig(length=len(doc_a) + len(doc_b) + over - 1, p=1.0, chunk_odds={2: 1.0}, min_split=2,
                          label_chars=1, seed=0)
    (s,) = list(core.pack_samples([doc_a, doc_b], cfg, mk, labels))
    toks = s.tokens.tolist()
    a = s.pieces[0]
    la, lb = (500 + ord(x) for x in a.labels)
    cut = a.cuts[0]
    first = [903, la, 904, *doc_a[:cut].tolist(), 901]
    second = [902, 903, lb, 904, *doc_a[cut:].tolist(), 905, la, 906, lb, 907]
    b = doc_b.tolist()
    assert toks in (first + second + b, first + b + second, b + first + second)  # a's order kept, b anywhere


def test_content_in_doc_and_chunk_order_is_the_packed_stream(setup):
    """Spec 5.2: markers removed and chunks put back in (document, chunk) order, the samples one after
    another are the document stream itself, every token exactly once."""
    docs, _, _, _, _ = setup
    samples, _ = _samples(setup)
    stream = np.concatenate(docs)
    rebuilt = []
    for s in samples:
        for c in sorted(s.chunks, key=lambda c: (c["piece"], c["chunk_idx"])):
            rebuilt.append(s.tokens[c["out_start"]:c["out_start"] + c["src_end"] - c["src_start"]])
        content = sum(c["src_end"] - c["src_start"] for c in s.chunks)
        assert content + int((s.roles != core.CONTENT).sum()) == len(s.tokens)  # markers are the rest
    rebuilt = np.concatenate(rebuilt)
    np.testing.assert_array_equal(rebuilt, stream[:len(rebuilt)])


def test_a_stream_read_on_demand_gives_the_list_samples_and_holds_one_sample_of_documents(setup):
    """Issue 35, point 3: the packer reads documents from a stream as samples need them and forgets
    the finished ones: the same samples as from the whole list, while its window never holds more
    than the documents one sample touches (plus the next one it looked at)."""
    docs, markers, labels, _, _ = setup
    cfg = core.KnotConfig(length=2048, seed=47)
    whole = list(core.pack_samples(docs, cfg, markers, labels))
    stream = core.DocStream((f"d{k}", d) for k, d in enumerate(docs))
    widest = 0
    streamed = []
    for s in core.pack_samples(stream, cfg, markers, labels):
        streamed.append(s)
        touched = len({p.doc for p in s.pieces})
        held = len(stream._docs)  # the window, right after the sample was made
        assert held <= touched + 1, (s.index, held, touched)
        widest = max(widest, held)
    assert len(streamed) == len(whole) > 10
    for a, b in zip(streamed, whole, strict=True):
        assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.roles, b.roles) and a.chunks == b.chunks
    assert widest < len(docs) / 10  # a window, not the stream


def test_the_label_cache_stays_small_over_a_long_stream():
    """Random labels almost never repeat: the cache keeps a bounded number of them (a cache of
    every label grew with the stream, about 100 bytes a chunk), and gives the same ids."""
    calls = []
    tok = core.LabelTokenizer(lambda s: calls.append(s) or [ord(c) for c in s])
    for k in range(3 * core.LabelTokenizer.CACHE):
        assert tok(f"L{k:06d}") == tuple(ord(c) for c in f"L{k:06d}")
    assert len(tok._cache) <= core.LabelTokenizer.CACHE
    assert tok("L000001") == tuple(ord(c) for c in "L000001") and tok("L000001") == tok("L000001")
