"""Every product pipeline gives the same output on every runner (issue 12, must show): the local
runner, Beam's multi-process runner and datatrove's, two workers each, over inputs cut into
several shards, and the model-bearing stages ran in Beam's worker processes, not in the driver.

Inputs are real texts (the corpora of OFFLINE.md), kept small so that the models run in seconds;
context lengths and windows are shrunk to fit them (the pipelines' own values are for real corpora).
"""

from __future__ import annotations

import hashlib
import json

import duckdb
import pytest

from tests.conftest import REPO, run_cli, write_jsonl

RUNNERS = [("local", ["--workers", "2"]), ("beam", ["--workers", "2"]), ("datatrove", ["--workers", "2"])]


def _gateau_samples(docs):
    rows = []
    for d in docs[:4]:
        text = " ".join(d["text"].split())[:1500]
        sentence = text[200:320]
        rows.append({"id": d["id"], "messages": [
            {"role": "user", "content": f"{text}\n\nRepeat the passage that begins with \"{sentence[:30]}\"."},
            {"role": "assistant", "content": sentence}]})
    return rows


def _labelled_verses(docs):
    """KJV verses labelled with their book (LIConBench's input), from the first chapters of eight books."""
    rows = []
    for d in [r for r in docs if r["source"] == "kjv" and r["id"].endswith("/001")][:8]:
        book = json.loads(d["metadata"])["book"]
        for k, verse in enumerate(d["text"].splitlines()):
            rows.append({"id": f"{d['id']}:{k}", "text": verse, "label": book, "split": "test" if k % 10 == 9
                         else "train", "dataset": "kjv"})
    return rows


def _posts(_docs):
    """The Posts.xml fixture's posts (the StackExchange dumps are not offline), as eval import writes them."""
    from pipelines.commands.eval_command import read_posts_rows

    return list(read_posts_rows(str(REPO / "tests" / "fixtures" / "stackexchange" / "Posts.xml")))


def _corpus(name: str, n: int, step: int = 1):
    """The first ``n`` documents (every ``step``-th) of a corpus that the session's real_docs lack."""
    from itertools import islice

    from pipelines.commands import corpora

    return lambda _docs: list(islice(corpora.CORPORA[name].build(), 0, n * step, step))


# pipeline file -> (how to make its input from the real documents, edits to the file for small inputs)
PRODUCTS = {
    "icp": (lambda d: [{"id": r["id"], "text": r["text"][:1500]} for r in d if r["source"] == "kjv"][:60],
            [("context_length: 8192", "context_length: 1024")]),
    "decomposition": (lambda d: [{"id": r["id"], "text": r["text"]} for r in d if r["source"] == "python_docs"][:60],
                      []),
    "concat-chunk": (lambda d: [{"id": r["id"], "text": r["text"]} for r in d if r["source"] == "python_docs"][:60],
                     [("context_length: 8192", "context_length: 1024")]),
    "utk": (lambda d: [{"id": r["id"], "text": r["text"]} for r in d if r["source"] == "python_docs"][:60],
            [("context_length: 32768", "context_length: 2048")]),
    "perplexity": (lambda d: [{"id": r["id"], "text": r["text"][:1200]} for r in d if r["source"] == "paul_graham"][:8],
                   [("max_tokens: 2048, stride: 1024", "max_tokens: 256, stride: 128")]),
    "gateau-smollm2": (lambda d: _gateau_samples([r for r in d if r["source"] == "paul_graham"]), []),
    "longalign": (lambda d: [{"id": r["id"], "text": r["text"][:2600]} for r in d if r["source"] == "paul_graham"][:2],
                  [("max_document_chars: 6000", "max_document_chars: 2500"),
                   ("question_tokens: 160, answer_tokens: 160", "question_tokens: 64, answer_tokens: 32"),
                   ("max_len: 8192, packs_per_step: 8", "max_len: 1024, packs_per_step: 2")]),
    "licon": (_labelled_verses, [("settings: [2048, 8192, 32768]", "settings: [512, 1024]"),
                                 ("test_items: 100", "test_items: 6")]),
    "bestanswer": (_posts, [("settings: [2048, 8192, 32768]", "settings: [256, 512]")]),
    "chft-homophone": (_corpus("peoples_daily_docs", 40, 60), []),
    "indonesian-hack": (_corpus("quran_tafsir_id", 60, 14), []),
}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return tmp_path_factory.mktemp("catalog") / "c.duckdb"


@pytest.mark.parametrize("product", list(PRODUCTS))
def test_product_fingerprints_agree_on_every_runner(product, real_docs, tmp_path, catalog):
    make_input, edits = PRODUCTS[product]
    rows = make_input(sorted(real_docs, key=lambda r: r["id"]))
    inp = write_jsonl(tmp_path / "input.jsonl", rows)
    spec = (REPO / "pipelines" / f"{product}.yaml").read_text()
    for old, new in edits:
        assert old in spec, old
        spec = spec.replace(old, new)
    pipe = tmp_path / f"{product}.yaml"
    pipe.write_text(spec + "\nread:\n  shard_mb: 0.01\n")  # several shards, so two workers share them
    prints = {}
    for runner, extra in RUNNERS:
        out = tmp_path / runner
        r = run_cli("run", str(pipe), "--input", str(inp), "--output", str(out), "--catalog", str(catalog),
                    "--runner", runner, "--quiet", *extra)
        assert r.returncode == 0, f"{product} on {runner}: {r.stderr[-3000:]}"
        prints[runner] = json.loads((out / ".longforge" / "run.json").read_text())["fingerprint"]
        side = sorted(p.name for p in out.iterdir() if (p / "data").is_dir())
        prints[runner] = (prints[runner], side, _files_for_trainers(out))
    assert len(set(map(str, prints.values()))) == 1, prints
    model_stage = {"icp": "icp_embed", "perplexity": "score", "gateau-smollm2": "hmg"}.get(product)
    if model_stage:
        _model_stages_ran_on_workers(tmp_path / "beam", catalog, model_stage)


def _files_for_trainers(out) -> dict[str, str]:
    """Digests of the files stages write beside the records (side tables, decomposition's bucket
    token files and schedule, UtK's tokenizer and markers, plots): trainers and users read these
    directly, so they must agree byte for byte too. The records themselves are the fingerprint's."""
    skip = {".longforge", "data", "README.md"}  # the card names the runner
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*"))
            if p.is_file() and p.relative_to(out).parts[0] not in skip}


def _model_stages_ran_on_workers(out, catalog, stage: str) -> None:
    """The shards of the step holding the model stage were processed by Beam's worker processes."""
    con = duckdb.connect(str(catalog), read_only=True)
    driver = con.execute("SELECT pid FROM runs WHERE output_path = ? ORDER BY started_at DESC LIMIT 1",
                         [str(out.resolve())]).fetchone()[0]
    con.close()
    markers = [json.loads(m.read_text()) for m in (out / ".longforge" / "work").glob("step-*/shard-*.done.json")]
    model = [m for m in markers if stage in m.get("batches", {})]
    assert model, f"no shard marker of a step with {stage}"
    assert all(m["pid"] != driver for m in model)
