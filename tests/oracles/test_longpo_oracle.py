"""LongPO (spec longpo.md 2, 3.2-3.6, 3.8, 3.10) on KJV books (the product's tests use the essays),
through pipelines/longpo.yaml as shipped, against the local OpenAI-compatible server in its
context-echo mode (tests/fixtures/openai_server.py: an answer names how many words of context it
was given; it stands in for pi_S). Checked here, apart from stages/longpo*: every chunk of the long
context is a verbatim piece of the book and they come in the book's order; each chosen answer saw
its chunk alone and each rejected one the whole long context; the first user turn is the long
context, a blank line and question 1; the labels hold the answers and nothing else; and the
reference log-probabilities equal a plain forward pass of the short chats to 1e-4."""

from __future__ import annotations

import re

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, build_corpus, run_cli, write_jsonl
from tests.gpu_jobs.test_generate import _server


def test_pairs_and_training_rows_on_kjv_books(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gpu_jobs.lm import resolve_causal_lm

    books = [b for b in pq.read_table(f"{build_corpus('kjv_books', tmp_path)}/data").to_pylist()
             if 40_000 <= len(b["text"]) <= 80_000][:2]
    src = write_jsonl(tmp_path / "books.jsonl", books)
    proc, port = _server("--echo")
    try:
        spec = (REPO / "pipelines" / "longpo.yaml").read_text().replace(
            "backend: local", f"backend: openai, base_url: 'http://127.0.0.1:{port}/v1', api_key_env: null, retries: 0")
        (tmp_path / "longpo.yaml").write_text(spec)
        done = run_cli("run", str(tmp_path / "longpo.yaml"), "--input", str(src), "--output", str(tmp_path / "out"),
                       "--catalog", str(tmp_path / "c.duckdb"), "--quiet")
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        proc.terminate()
        proc.wait()
    rows = pq.read_table(str(tmp_path / "out" / "data")).to_pylist()
    assert rows
    text_of = {b["id"]: b["text"] for b in books}
    folder = resolve_causal_lm("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True).eval()
    for row in rows:
        book = text_of[row["id"]]
        at = 0
        for chunk in row["long_context"].split("\n\n\n"):
            found = book.find(chunk, at)
            assert found >= 0, chunk[:80]  # verbatim, in the book's order
            at = found + len(chunk)
        assert row["prompt"][0]["content"] == row["long_context"] + "\n\n" + row["questions"][0]
        long_words = len(row["long_context"].split())
        for k in range(row["n_turns"]):
            chunk = row["short_prompts"][k][:-len("\n\n" + row["questions"][k])]
            assert row["short_prompts"][k] == chunk + "\n\n" + row["questions"][k] and chunk in row["long_context"]
            assert int(re.search(r"counted: (\d+)", row["chosens"][k]).group(1)) == len(chunk.split())
            assert int(re.search(r"counted: (\d+)", row["rejecteds"][k]).group(1)) == long_words
        for side in ("chosen", "rejected"):
            kept = [t for t, lab in zip(row[f"{side}_input_ids"], row[f"{side}_labels"], strict=True) if lab != -100]
            assert tok.decode(kept) == "".join(f"{a}<|im_end|>\n" for a in row[f"{side}s"])
            direct = []
            for prompt, answer in zip(row["short_prompts"], row[f"{side}s"], strict=True):
                head = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                               add_generation_prompt=True, return_dict=True)["input_ids"]
                full = tok.apply_chat_template([{"role": "user", "content": prompt},
                                                {"role": "assistant", "content": answer}], tokenize=True,
                                               return_dict=True)["input_ids"]
                with torch.no_grad():
                    logp = torch.log_softmax(model(torch.tensor([full])).logits[0].double(), dim=-1)
                direct.append(sum(float(logp[i - 1, full[i]]) for i in range(len(head), len(full))))
            assert row[f"reference_{side}_logps"] == pytest.approx(direct, abs=1e-4)
