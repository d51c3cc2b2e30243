"""LongAlign packing and loss weighting (spec longalign.md 3.3, 3.4, 6), re-derived here, on chat
rows made from KJV chapters (the product's tests use the essays), through the product's
chat_tokenize and longalign_batches stages. Each row is its chat under the chat template, its
labels the assistant's tokens; packs are cut greedily, a new one when the next row would reach L;
a sequence's target tokens weigh 1/N_i; and with K packs per step and M sequences in them, the
packed loss sum_t w_t K/M l_t / K equals the paper's (1/M) sum_i mean loss_i (Eq. 2 through Eq. 4).
Written apart from stages/longalign*."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import build_corpus, run_cli, write_jsonl

L, K = 2048, 4


def test_packs_weights_and_the_papers_loss(tmp_path):
    from transformers import AutoTokenizer

    from gpu_jobs.lm import resolve_causal_lm

    chapters = sorted(pq.read_table(f"{build_corpus('kjv_chapters', tmp_path)}/data").to_pylist(),
                      key=lambda r: r["id"])[::40][:24]
    rows = [{"id": f"r{k:03d}", "messages": [
        {"role": "user", "content": "Which verse opens this chapter?\n\n" + c["text"][:300 + 150 * (k % 8)]},
        {"role": "assistant", "content": c["text"].split("\n")[0]}]} for k, c in enumerate(chapters)]
    src = write_jsonl(tmp_path / "chat.jsonl", rows)
    (tmp_path / "p.yaml").write_text(
        "name: longalign-packing\nseed: 0\ninputs: []\nstages:\n"
        "  - stage: chat_tokenize\n    params: {tokenizer: smollm2-135m, max_len: 2048, overflow: skip}\n"
        f"  - stage: longalign_batches\n    params: {{mode: pack, max_len: {L}, packs_per_step: {K}}}\n")
    done = run_cli("run", str(tmp_path / "p.yaml"), "--input", str(src), "--output", str(tmp_path / "out"),
                   "--catalog", str(tmp_path / "c.duckdb"), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    packs = sorted(pq.read_table(str(tmp_path / "out" / "data")).to_pylist(), key=lambda p: int(p["id"].split("-")[1]))

    tok = AutoTokenizer.from_pretrained(str(resolve_causal_lm("smollm2-135m")), local_files_only=True)
    want = {}
    for r in rows:
        full = tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"]
        head = tok.apply_chat_template(r["messages"][:1], tokenize=True, add_generation_prompt=True,
                                       return_dict=True)["input_ids"]
        want[r["id"]] = (list(full), len(full) - len(head))
    # every row in exactly one pack; greedy packing over the rows' (shuffled) order: a pack is closed
    # exactly when the next row would bring it to L or over
    order = [sid for p in packs for sid in p["seq_ids"]]
    assert sorted(order) == sorted(want)
    for a, b in zip(packs, packs[1:], strict=False):
        used = sum(len(want[s][0]) for s in a["seq_ids"])
        assert used < L and used + len(want[b["seq_ids"][0]][0]) >= L
    rng = np.random.default_rng(0)
    for p in packs:
        cu = p["cu_seqlens"]
        assert cu[0] == 0 and cu[-1] == L and all(a < b for a, b in zip(cu, cu[1:], strict=False))
        w = np.asarray(p["weights"], float)
        for k, sid in enumerate(p["seq_ids"]):
            ids, n_target = want[sid]
            assert p["input_ids"][cu[k]:cu[k + 1]] == ids  # the row, token for token
            part = w[cu[k]:cu[k + 1]]
            assert part.sum() == pytest.approx(1.0, abs=1e-5) and (part > 0).sum() == n_target
        assert all(wt == 0 for wt, lab in zip(p["weights"], p["labels"], strict=True) if lab == -100)
        p["losses"] = rng.random(L)
    # Eq. 2 through Eq. 4 over each step of K packs
    for g in range(0, len(packs), K):
        step = packs[g:g + K]
        m = sum(p["n_seqs"] for p in step)
        assert all(p["group_seq_count"] == m for p in step)
        packed = sum(float(np.dot(np.asarray(p["weights"], float) * len(step) / m, p["losses"])) for p in step) \
            / len(step)
        per_seq = [float(np.mean([p["losses"][t] for t in range(p["cu_seqlens"][k], p["cu_seqlens"][k + 1])
                                  if p["labels"][t] != -100])) for p in step for k in range(p["n_seqs"])]
        assert packed == pytest.approx(sum(per_seq) / m, rel=1e-5)
