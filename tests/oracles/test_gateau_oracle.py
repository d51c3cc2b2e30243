"""GATEAU (spec gateau.md 3.2-3.4, 6): the ranking re-derived here from the scores the run
publishes, on samples built from KJV books (the product's tests use the essays), through
pipelines/gateau-smollm2.yaml. hmg_raw = minmax(PPL_short) - minmax(PPL_long) over the pool,
hmg = its softmax over the pool; imp = softmax(-log segment PPL) over a sample's segments, att = its
segment attention renormalised, cas = cos(imp, att), cam = softmax over the pool of 1 - cas;
score = 0.8 hmg + 0.2 cam; the top ceil(0.1 N) by score (ties by id) are selected. That is the
code's reading (`longforge select --term-scale none`); the project's default (ours, recorded in
the output) min-max scales both raw terms over the pool before the softmax, so that alpha weighs
like against like: both modes are checked. Written apart from stages/gateau*."""

from __future__ import annotations

import math
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, build_corpus, run_cli, write_jsonl


def softmax(x):
    e = np.exp(np.asarray(x, float) - np.max(x))
    return e / e.sum()


def minmax(x):
    x = np.asarray(x, float)
    return (x - x.min()) / (x.max() - x.min()) if x.max() > x.min() else np.zeros_like(x)


def test_the_ranking_follows_the_formulas_on_kjv_samples(tmp_path):
    books = pq.read_table(f"{build_corpus('kjv_books', tmp_path)}/data").to_pylist()
    samples = []
    for b in books[:40]:
        text = re.sub(r"\s+", " ", b["text"])[2000:4600]
        verses = re.findall(r"[A-Z][^.;:?!]{40,160}[.;:?!]", text)
        if len(verses) < 4:
            continue
        for where, verse in (("early", verses[0]), ("late", verses[-2])):
            lead = " ".join(verse.split()[:6])
            samples.append({"id": f"{where}-{b['id']}", "messages": [
                {"role": "user", "content": f"{text}\n\nRepeat the verse that begins with \"{lead}\"."},
                {"role": "assistant", "content": verse}]})
        if len(samples) >= 8:
            break
    src = write_jsonl(tmp_path / "sft.jsonl", samples)
    done = run_cli("run", str(REPO / "pipelines" / "gateau-smollm2.yaml"), "--input", str(src), "--output",
                   str(tmp_path / "out"), "--catalog", str(tmp_path / "c.duckdb"), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = sorted(pq.read_table(str(tmp_path / "out" / "gateau_scores")).to_pylist(), key=lambda r: r["id"])
    assert len(rows) == len(samples)
    hmg_raw = minmax([r["ppl_short"] for r in rows]) - minmax([r["ppl_long"] for r in rows])
    cas = []
    for r in rows:
        imp = softmax(-np.log(np.asarray(r["seg_ppl"], float)))
        att = np.asarray(r["seg_attn"], float)
        att = att / att.sum()
        cas.append(float(imp @ att / (np.linalg.norm(imp) * np.linalg.norm(att))))
    difficulty = 1 - np.asarray(cas)
    for scale, ids_of in (("minmax", _default_run(tmp_path)), ("none", _reselected(tmp_path, "none"))):
        f = minmax if scale == "minmax" else (lambda x: np.asarray(x, float))
        hmg, cam = softmax(f(hmg_raw)), softmax(f(difficulty))
        score = 0.8 * hmg + 0.2 * cam
        got = ids_of(rows)
        for k, r in enumerate(rows):
            assert (r["hmg_raw"], r["cas"]) == pytest.approx((hmg_raw[k], cas[k]), rel=1e-9, abs=1e-12), r["id"]
            assert (got[r["id"]]["hmg"], got[r["id"]]["cam"], got[r["id"]]["score"]) == pytest.approx(
                (hmg[k], cam[k], score[k]), rel=1e-9, abs=1e-12), (scale, r["id"])
        ranked = sorted(range(len(rows)), key=lambda k: (-score[k], rows[k]["id"]))
        assert [rows[k]["id"] for k in ranked] == sorted(got, key=lambda i: got[i]["rank"]), scale
        top = {rows[k]["id"] for k in ranked[:math.ceil(0.1 * len(rows))]}
        assert {i for i, r in got.items() if r["selected"]} == top, scale


def _default_run(tmp_path):
    def ids_of(rows):
        return {r["id"]: r for r in rows}
    return ids_of


def _reselected(tmp_path, scale: str):
    done = run_cli("select", str(tmp_path / "out"), "--term-scale", scale, "--output", str(tmp_path / f"sel-{scale}"))
    assert done.returncode == 0, done.stderr[-3000:]

    def ids_of(_rows):
        table = pq.read_table(str(tmp_path / f"sel-{scale}" / "gateau_scores" / "data"))
        return {r["id"]: r for r in table.to_pylist()}
    return ids_of
