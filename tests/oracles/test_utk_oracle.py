"""Untie the Knots (spec untie-the-knots.md 3.2, 3.3): a round trip on CPython's sources (the
product's tests use the essays, KJV chapters and Python docs), through pipelines/utk.yaml at 8K.
The samples are read here with a parser of our own, from the marker ids the run publishes: a
labelled chunk runs from its label header to its tail knot or to the backtrace after it; a
backtrace lists a document's labels in its order, and its chunks in that order are the document,
token for token; unlabelled text between end-of-document tokens is an unsplit document. Every
unit read so is a run of an input document, and most are whole ones. Apart from stages/utk*."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, build_corpus, run_cli, write_jsonl


def read_documents(seq: list[int], ids: dict[str, int], eos: int) -> tuple[list[tuple], list[tuple]]:
    """(documents rebuilt from backtraces, unsplit documents) of one sample's token stream; the
    runs cut by the sample's start or end are left out."""
    knots = {v for k, v in ids.items() if k.startswith(("head_", "tail_"))}
    tails = {v for k, v in ids.items() if k.startswith("tail_")}
    chunks: dict[tuple, list[int]] = {}
    split_docs, plain_docs = [], []
    plain: list[int] = []
    seen_eos = False  # the first plain run may be the end of a document cut by the sample's start
    label: tuple | None = None
    i = 0
    while i < len(seq):
        t = seq[i]
        if t == ids["label_open"]:
            j = seq.index(ids["label_close"], i)
            label, i = tuple(seq[i + 1:j]), j + 1
            chunks[label] = []
            continue
        if t == ids["bt_open"]:
            if ids["bt_close"] not in seq[i:]:
                break  # a backtrace cut by the sample's end
            j = seq.index(ids["bt_close"], i)
            order, cur = [], []
            for x in seq[i + 1:j]:
                if x == ids["bt_sep"]:
                    order.append(tuple(cur))
                    cur = []
                else:
                    cur.append(x)
            order.append(tuple(cur))
            if all(lab in chunks for lab in order):
                split_docs.append(tuple(x for lab in order for x in chunks.pop(lab)))
            label, i = None, j + 1
            continue
        if t in knots:
            if t in tails:
                label = None
            i += 1
            continue
        if label is not None:
            chunks[label].append(t)
        else:
            plain.append(t)
            if t == eos:
                if seen_eos:
                    plain_docs.append(tuple(plain))
                seen_eos, plain = True, []
        i += 1
    return split_docs, plain_docs


@pytest.mark.parametrize("preserve_order", [True, False])
def test_samples_read_back_into_the_input_documents(tmp_path, preserve_order):
    """PreserveOrder (the paper's, our default) and the reference code's default (off): the
    backtrace names the order either way."""
    from tokenizers import Tokenizer

    from gpu_jobs.models import tokenizer_path

    docs = sorted(pq.read_table(f"{build_corpus('python_sources', tmp_path)}/data").to_pylist(),
                  key=lambda d: d["id"])[::8][:60]
    src = write_jsonl(tmp_path / "src.jsonl", docs)
    spec = (REPO / "pipelines" / "utk.yaml").read_text().replace("context_length: 32768", "context_length: 8192")
    assert "preserve_order: true" in spec
    spec = spec.replace("preserve_order: true", f"preserve_order: {str(preserve_order).lower()}")
    (tmp_path / "utk.yaml").write_text(spec)
    done = run_cli("run", str(tmp_path / "utk.yaml"), "--input", str(src), "--output", str(tmp_path / "out"),
                   "--catalog", str(tmp_path / "c.duckdb"), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((tmp_path / "out" / "utk" / "markers.json").read_text())
    assert all(len(v) == 1 for v in meta["marker_ids"].values())
    ids = {k: v[0] for k, v in meta["marker_ids"].items()}
    tok = Tokenizer.from_file(str(tokenizer_path("smollm2")))
    tok.no_truncation()
    want = Counter(tuple(tok.encode(d["text"], add_special_tokens=False).ids + [meta["eos_id"]]) for d in docs)
    rows = pq.read_table(str(tmp_path / "out" / "data"), columns=["tokens", "labels", "utk_applied"]).to_pylist()
    got: Counter = Counter()
    rebuilt = 0
    for r in rows:
        split_docs, plain_docs = read_documents(r["tokens"] + r["labels"][-1:], ids, meta["eos_id"])
        rebuilt += len(split_docs)
        got.update(split_docs + plain_docs)
    # every unit read back is a run of an input document, token for token (a document longer than
    # a sample is cut by packing: its pieces are runs of it); most are whole documents
    streams = [np.asarray(d, np.int32).tobytes() for d in want]
    for unit in got:
        needle = np.asarray(unit, np.int32).tobytes()
        assert any(_aligned_find(s, needle) for s in streams), len(unit)
    whole = got & want
    assert rebuilt >= 5 and sum(whole.values()) >= 0.5 * len(docs)
    assert not whole - want  # no document twice


def _aligned_find(haystack: bytes, needle: bytes) -> bool:
    at = haystack.find(needle)
    while at != -1:
        if at % 4 == 0:
            return True
        at = haystack.find(needle, at + 1)
    return False
