"""pipelines/decomposition.yaml on the real corpora: spec section 5 on the artifacts, and the schedule
replayed through the PyTorch dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from catalog import Catalog
from tests.conftest import REPO, run_cli


@pytest.fixture(scope="module")
def dd_run(corpora_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("dd")
    outs = []
    for name in ("a", "b"):
        args = ["run", str(REPO / "pipelines" / "decomposition.yaml"), "--output", str(base / name),
                "--catalog", str(base / "c.duckdb"), "--quiet"]
        for corpus in ("paul_graham", "kjv_chapters", "python_docs"):
            args += ["--input", str(corpora_dir / corpus)]
        r = run_cli(*args)
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(base / name)
    return outs, base / "c.duckdb"


def _rows(folder: Path):
    return pq.read_table(str(folder / "data")).to_pylist()


def test_pieces_are_powers_of_two_contiguous_from_zero_and_conserve_tokens(dd_run, tokenized_docs):
    (out, _), _ = dd_run
    docs = tokenized_docs
    seqs = _rows(out)
    drops = {r["id"]: r for r in _rows(out / "drop_log")}
    by_doc: dict[str, list] = {}
    for s in seqs:
        assert s["length"] == 2 ** s["bucket"] == len(s["input_ids"]) and 8 <= s["bucket"] <= 13
        by_doc.setdefault(s["doc_id"], []).append(s)
    kept = 0
    for doc_id, toks in docs.items():
        pieces = sorted(by_doc.get(doc_id, []), key=lambda s: s["piece_idx"])
        at = 0
        for p in pieces:
            assert p["doc_offset"] == at and p["input_ids"] == toks[at:at + p["length"]]
            at += p["length"]
        assert drops[doc_id]["dropped_tokens"] == len(toks) - at < 256
        if len(toks) < 2**14:
            assert [p["length"] for p in pieces] == [1 << b for b in range(13, 7, -1) if len(toks) & (1 << b)]
        kept += at
    assert kept + sum(d["dropped_tokens"] for d in drops.values()) == sum(len(t) for t in docs.values())


def test_schedule_batches_are_single_bucket_with_the_budget(dd_run):
    (out, _), _ = dd_run
    seqs = {s["id"]: s for s in _rows(out)}
    steps = sorted(_rows(out / "schedule"), key=lambda s: s["step"])
    assert steps
    for st in steps:
        lengths = {seqs[q]["length"] for q in st["seq_ids"]}
        assert lengths == {2 ** st["bucket"]} and len(st["seq_ids"]) * 2 ** st["bucket"] == 8192
    used = [q for st in steps for q in st["seq_ids"]]
    assert len(used) == len(set(used))


def test_sampler_replays_every_scheduled_sequence_once_per_cycle(dd_run):
    import torch

    from stages.decomposition.vsl_replay import VslScheduleDataset

    (out, _), _ = dd_run
    seqs = {s["id"]: s for s in _rows(out)}
    steps = sorted(_rows(out / "schedule"), key=lambda s: s["step"])
    data = VslScheduleDataset(out)
    seen: dict[int, list] = {}
    for st, batch in zip(steps, torch.utils.data.DataLoader(data, batch_size=None), strict=True):
        assert batch["bucket"] == st["bucket"] and batch["input_ids"].shape == (len(st["seq_ids"]), 2 ** st["bucket"])
        for q, row in zip(st["seq_ids"], batch["input_ids"].tolist(), strict=True):
            assert row == seqs[q]["input_ids"]
        seen.setdefault(st["cycle"], []).extend(st["seq_ids"])
    assert len(seen) == 8
    for cycle, ids in seen.items():
        assert len(ids) == len(set(ids)), cycle
    # With a budget of one 8192-token sequence per step, two ranks cannot share a D13 step: say so.
    with pytest.raises(ValueError, match="do not split over 2 ranks"):
        list(VslScheduleDataset(out, rank=0, world_size=2))
    # Ranks that can share a step take disjoint halves of the same bucket's sequences.
    r0, r1 = VslScheduleDataset(out, rank=0, world_size=2), VslScheduleDataset(out, rank=1, world_size=2)
    r0.schedule = r1.schedule = [s for s in r0.schedule if len(s["seq_rows"]) % 2 == 0]
    for x, y in zip(r0, r1, strict=True):
        assert x["bucket"] == y["bucket"] and not set(x["seq_rows"]) & set(y["seq_rows"])


def test_statistics_in_the_catalog_and_same_bytes(dd_run):
    (a, b), catalog = dd_run
    m = dict(((s, n), v) for s, n, v in Catalog(str(catalog)).query("SELECT stage, name, value FROM metrics")[1])
    assert m[("decompose", "cross_document_attention_share")] == 0
    assert 0 < m[("decompose", "dropped_token_share")] < 0.5
    assert m[("decompose", "attention_cost_vs_concat_chunk")] < 1
    assert sum(v for (s, n), v in m.items() if n.startswith("tokens_bucket_")) == m[("decompose", "tokens_kept")]
    for sub in ("data", "schedule/data", "buckets/D10", "buckets", "plots"):
        fa = sorted(p for p in (a / sub).iterdir() if p.is_file())
        fb = sorted(p for p in (b / sub).iterdir() if p.is_file())
        assert [p.read_bytes() for p in fa] == [p.read_bytes() for p in fb], sub
    tokens = np.memmap(a / "buckets" / "D13" / "tokens.bin", dtype="<i4", mode="r")
    assert len(tokens) == m[("decompose", "tokens_bucket_13")]


def test_each_bucket_is_written_as_parquet_and_as_a_token_file(dd_run):
    (out, _), _ = dd_run
    seqs = _rows(out)
    for folder in sorted((out / "buckets").glob("D*")):
        i = int(folder.name[1:])
        part = pq.read_table([str(f) for f in sorted((out / "data").glob(f"train-D{i:02d}-*.parquet"))]).to_pylist()
        index = pq.read_table(folder / "index.parquet").to_pylist()
        tokens = np.memmap(folder / "tokens.bin", dtype="<i4", mode="r")
        assert {r["bucket"] for r in part} == {i} and len(part) == len(index) == sum(s["bucket"] == i for s in seqs)
        # The token file holds the bucket's sequences back to back, in id order (the schedule's seq_rows).
        assert [ix["seq_id"] for ix in index] == sorted(r["id"] for r in part)
        assert [ix["start"] for ix in index[1:]] == [ix["end"] for ix in index[:-1]] and index[0]["start"] == 0
        assert index[-1]["end"] == len(tokens)
        by_id = {r["id"]: r for r in part}
        for ix in index:
            r = by_id[ix["seq_id"]]
            assert tokens[ix["start"]:ix["end"]].tolist() == r["input_ids"]
            assert (ix["doc_id"], ix["doc_offset"]) == (r["doc_id"], r["doc_offset"])


@pytest.mark.parametrize("runner", ["beam", "datatrove"])
def test_other_runners_give_the_same_buckets(dd_run, corpora_dir, tmp_path, runner):
    """The token ids (numpy arrays between stages, no text kept) travel through every runner."""
    (a, _), _ = dd_run
    out = tmp_path / runner
    args = ["run", str(REPO / "pipelines" / "decomposition.yaml"), "--output", str(out),
            "--catalog", str(tmp_path / "c.duckdb"), "--quiet", "--runner", runner, "--workers", "2"]
    for corpus in ("paul_graham", "kjv_chapters", "python_docs"):
        args += ["--input", str(corpora_dir / corpus)]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    for sub in ("data", "drop_log/data", "buckets/D10", "schedule/data"):
        fa = sorted(p for p in (a / sub).iterdir() if p.is_file())
        fb = sorted(p for p in (out / sub).iterdir() if p.is_file())
        assert [p.name for p in fa] == [p.name for p in fb] and fa, sub
        assert [p.read_bytes() for p in fa] == [p.read_bytes() for p in fb], sub
