"""Perplexity throughput on CPU: token-budget batches of length-sorted rows against naive padded
batches, on the same mixed-length real texts, in one run.

    .venv/bin/python bench/scoring.py [--samples 48] [--model smollm2-135m] [--threads 2]

Texts are windows of the Paul Graham essays, KJV chapters and Python docs whose lengths are drawn
log-uniformly between --min-tokens and --max-tokens. Both methods run the same forward code
(gpu_jobs.scoring.row_nll: logits only where a token is scored); only the batching differs:
naive = rows in input order, --naive-batch rows per batch, padded to the longest; ours = rows
sorted by length, grouped while rows x longest <= --budget. Scores must agree (checked).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from pipelines.engine.progress import format_table  # noqa: E402


def mixed_texts(lm, n: int, lo: int, hi: int, seed: int = 0) -> list[dict]:
    from pipelines.commands import corpora

    texts = [d["text"] for name in ("paul_graham", "kjv_books", "python_docs") for d in corpora.CORPORA[name].build()]
    ids = [lm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts if len(t) > 4 * hi * 5]
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        length = int(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        src = ids[k % len(ids)]
        start = int(rng.integers(0, len(src) - length))
        out.append({"id": f"t{k:04d}", "text": lm.tokenizer.decode(src[start:start + length])})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--min-tokens", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--naive-batch", type=int, default=8)
    ap.add_argument("--budget", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()

    import torch
    from transformers.utils import logging

    from gpu_jobs.lm import load_causal_lm
    from gpu_jobs.scoring import ScoreSettings, padded_batches, score_part

    logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    lm = load_causal_lm(args.model, device="cpu")
    records = mixed_texts(lm, args.samples, args.min_tokens, args.max_tokens)
    settings = ScoreSettings("perplexity", token_budget=args.budget)
    results, rows = {}, []
    for name, batcher in ((f"naive: fixed batches of {args.naive_batch}, padded",
                           lambda rs: padded_batches(rs, args.naive_batch)),
                          (f"ours: length-sorted, {args.budget}-token budget", None)):
        stats = {"real": 0, "padded": 0}

        def counting(rs, batcher=batcher, stats=stats):
            from gpu_jobs.scoring import budget_batches

            for b in (batcher(rs) if batcher else budget_batches(rs, args.budget)):
                stats["real"] += sum(len(r.ids) for r in b)
                stats["padded"] += len(b) * max(len(r.ids) for r in b)
                yield b

        t0 = time.perf_counter()
        out = score_part(lm, settings, records, batcher=counting)
        seconds = time.perf_counter() - t0
        results[name] = {o["sample_id"]: o["value"] for o in out if o["metric"] == "ppl"}
        rows.append((name, stats["real"], stats["padded"], round(1 - stats["real"] / stats["padded"], 3),
                     round(seconds, 2), round(stats["real"] / seconds)))
    a, b = results.values()
    worst = max(abs(a[k] - b[k]) / b[k] for k in a)
    base = rows[0][5]
    rows = [(*r, round(r[5] / base, 2)) for r in rows]
    print(f"perplexity, {args.model}, {lm.dtype} on {args.threads} CPU threads, {args.samples} real texts of "
          f"{args.min_tokens}-{args.max_tokens} tokens; largest relative difference between the two: {worst:.1e}")
    print(format_table(["batching", "tokens", "padded tokens", "padding share", "seconds", "tokens/s", "x naive"],
                       rows))


if __name__ == "__main__":
    main()
