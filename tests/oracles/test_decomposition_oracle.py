"""Dataset Decomposition (spec dataset-decomposition.md 3.1, 5): the binary-expansion rule,
re-derived here and checked first on the spec's worked examples, then against
pipelines/decomposition.yaml on CPython's standard-library sources (the product's tests use the
essays, KJV and Python docs). Each document's pieces, in order, are the prefix of its tokens, and
their sizes are the rule's. Written apart from stages/decomposition*."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, build_corpus, run_cli, write_jsonl

MIN, MAX = 256, 8192


def pieces(length: int) -> list[int]:
    """The paper's rule, deterministic overflow: cut 2^max while more than 2^max remains, then the
    binary expansion from the largest power down; the tail under 2^min is dropped."""
    out, left = [], length
    while left >= MIN:
        size = MAX if left >= MAX else 1 << (left.bit_length() - 1)
        out.append(size)
        left -= size
    return out


@pytest.mark.parametrize(("length", "expected", "dropped"), [  # spec 3.1's worked examples
    (100, [], 100), (1000, [512, 256], 232), (5000, [4096, 512, 256], 136), (8193, [8192], 1),
    (20000, [8192, 8192, 2048, 1024, 512], 32),
])
def test_the_rule_on_the_specs_worked_examples(length, expected, dropped):
    assert pieces(length) == expected and length - sum(expected) == dropped


@pytest.mark.parametrize("overflow", ["deterministic", "random"])
def test_every_document_is_cut_by_the_rule_and_its_pieces_are_its_token_prefix(tmp_path, overflow):
    """``deterministic`` (ours, the default) is checked against the rule piece by piece; ``random``
    (the reference code's default: a part over 2^max drawn from the buckets) against what both share:
    powers of two in range, the token prefix in order, a dropped tail under 2^min."""
    from tokenizers import Tokenizer

    from gpu_jobs.models import tokenizer_path

    docs = pq.read_table(f"{build_corpus('python_sources', tmp_path)}/data").to_pylist()
    docs = sorted(docs, key=lambda d: d["id"])[::12][:40]
    src = write_jsonl(tmp_path / "src.jsonl", docs)
    spec = (REPO / "pipelines" / "decomposition.yaml").read_text()
    assert "overflow: deterministic" in spec
    (tmp_path / "dd.yaml").write_text(spec.replace("overflow: deterministic", f"overflow: {overflow}"))
    done = run_cli("run", str(tmp_path / "dd.yaml"), "--input", str(src), "--output",
                   str(tmp_path / "out"), "--catalog", str(tmp_path / "c.duckdb"), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pq.read_table(str(tmp_path / "out" / "data")).to_pylist()
    tok = Tokenizer.from_file(str(tokenizer_path("smollm2")))
    tok.no_truncation()
    eos = tok.token_to_id("<|endoftext|>")
    by_doc: dict[str, list[dict]] = {}
    for r in rows:
        by_doc.setdefault(r["doc_id"], []).append(r)
    checked = 0
    for d in docs:
        ids = tok.encode(d["text"], add_special_tokens=False).ids + [eos]
        mine = sorted(by_doc.get(d["id"], []), key=lambda r: r["doc_offset"])
        sizes = [len(r["input_ids"]) for r in mine]
        if overflow == "deterministic":
            assert sizes == pieces(len(ids)), d["id"]
        assert all(MIN <= n <= MAX and n & (n - 1) == 0 for n in sizes) and len(ids) - sum(sizes) < MIN
        assert [x for r in mine for x in r["input_ids"]] == ids[:sum(sizes)]
        assert all(r["length"] == len(r["input_ids"]) == 1 << r["bucket"] for r in mine)
        checked += bool(mine)
    assert checked >= 20
