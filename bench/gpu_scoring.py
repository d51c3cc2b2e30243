"""Perplexity scoring on a GPU: naive padded batching against token-budget batching, with tokens
per second, peak memory and model FLOPs utilisation.

    .venv/bin/python bench/gpu_scoring.py                 # CUDA: a ~1B Llama, 48 samples of 1k-32k tokens
    .venv/bin/python bench/gpu_scoring.py --size small    # CPU: a tiny Llama, 48 samples of 64-1k tokens

The model is built from a config with random weights (speed does not depend on the weights): bf16
on CUDA, float32 on CPU. Samples are random token ids with lengths drawn log-uniformly. Both
methods run gpu_jobs.scoring.row_nll (SDPA attention, vocabulary logits only where a token is
scored, in chunks); naive = samples in input order, --naive-batch per batch, padded to the longest;
ours = length-sorted, grouped while rows x longest <= --budget. Each method stops after
--time-limit seconds (default 150) and is measured over the batches it finished, so the whole
script stays well under 8 minutes on an H200. MFU counts the useful (unpadded) tokens only:
2 x parameters per token plus causal attention 2 x layers x L^2 x hidden per sample, over the peak
dense bf16 rate (--peak-tflops, 989 for an H200 SXM).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from pipelines.engine.progress import format_table  # noqa: E402

SIZES = {
    # ~1.1B parameters: Llama-style, grouped-query attention, 32k positions
    "1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=32768),
    "small": dict(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096),
}


def flops(n_params: int, lengths: list[int], layers: int, hidden: int) -> float:
    return sum(2.0 * n_params * n + 2.0 * layers * n * n * hidden for n in lengths)


def _timed(lm, name: str, batches, values: dict, args, cuda: bool, n_params: int, cfg) -> dict:
    """One method's batches through row_nll, timed, until done, out of memory or the time limit."""
    import torch

    from gpu_jobs.scoring import row_nll

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    done, padded, status = [], 0, "all"
    for b in batches:
        try:
            for r, v in zip(b, row_nll(lm, b), strict=True):
                values[r.sample] = v[0] / v[1]
        except torch.OutOfMemoryError:
            status = "out of memory"
            break
        done += [len(r.ids) for r in b]
        padded += len(b) * max(len(r.ids) for r in b)
        if time.perf_counter() - t0 > args.time_limit:
            status = f"stopped at {args.time_limit:.0f} s"
            break
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    tok_s = sum(done) / seconds if seconds else 0.0
    mfu = flops(n_params, done, cfg.num_hidden_layers, cfg.hidden_size) / seconds / (args.peak_tflops * 1e12) \
        if args.peak_tflops else None
    return {"method": name, "samples": len(done), "tokens": sum(done), "padded_tokens": padded,
            "seconds": round(seconds, 2), "tokens_per_s": round(tok_s), "peak_gib": peak, "mfu": mfu,
            "status": status}


def main() -> None:
    import torch
    from transformers import LlamaConfig

    from gpu_jobs.lm import model_from_config
    from gpu_jobs.scoring import Row, budget_batches, padded_batches, row_nll

    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="1b" if cuda else "small")
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--min-tokens", type=int)
    ap.add_argument("--max-tokens", type=int)
    ap.add_argument("--naive-batch", type=int, default=8)
    ap.add_argument("--budget", type=int, help="padded tokens per batch (ours)")
    ap.add_argument("--time-limit", type=float, default=150.0, help="seconds per method")
    ap.add_argument("--peak-tflops", type=float, default=989.0 if cuda else 0.0)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    big = args.size == "1b"
    lo = args.min_tokens or (1024 if big else 64)
    hi = args.max_tokens or (32768 if big else 1024)
    budget = args.budget or (65536 if big else 4096)

    cfg = LlamaConfig(**SIZES[args.size])
    lm = model_from_config(cfg, tokenizer=None, name=f"llama-{args.size}-random")
    n_params = sum(p.numel() for p in lm.model.parameters()) - cfg.vocab_size * cfg.hidden_size  # no embedding
    rng = np.random.default_rng(0)
    lengths = [int(np.exp(rng.uniform(np.log(lo), np.log(hi)))) for _ in range(args.samples)]

    class _Tok:  # row_nll only needs the pad id
        pad_token_id = 0

    lm.tokenizer = _Tok()
    rows = []
    for k, n in enumerate(lengths):
        t = np.ones(n, dtype=bool)
        t[0] = False
        rows.append(Row(k, rng.integers(1, cfg.vocab_size, n).tolist(), t))
    # warm-up (kernels, allocator)
    row_nll(lm, [Row(0, rows[0].ids[:256], rows[0].targets[:256])])
    out = []
    values = {}
    for name, batches in ((f"naive: {args.naive_batch} per batch, padded", padded_batches(rows, args.naive_batch)),
                          (f"ours: length-sorted, {budget:,}-token budget", budget_batches(rows, budget))):
        out.append(_timed(lm, name, batches, values.setdefault(name, {}), args, cuda, n_params, cfg))
    common = set.intersection(*(set(v) for v in values.values())) if len(values) == 2 else set()
    a, b = (values[m["method"]] for m in out) if len(values) == 2 else ({}, {})
    worst = max((abs(a[k] - b[k]) / abs(b[k]) for k in common), default=float("nan"))
    device = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"{device}, {args.size} Llama from a config ({(n_params + cfg.vocab_size * cfg.hidden_size) / 1e9:.2f}B "
          f"parameters, {lm.dtype}), {args.samples} samples of {lo:,}-{hi:,} tokens "
          f"({sum(lengths):,} tokens); mean NLL agrees to {worst:.1e} relative on the samples both finished")
    base = out[0]["tokens_per_s"] or 1
    print(format_table(
        ["method", "samples", "tokens", "padded", "seconds", "tokens/s", "x naive", "peak GiB", "MFU", "status"],
        [(m["method"], m["samples"], m["tokens"], m["padded_tokens"], m["seconds"], m["tokens_per_s"],
          round(m["tokens_per_s"] / base, 2), None if m["peak_gib"] is None else round(m["peak_gib"], 1),
          None if m["mfu"] is None else round(m["mfu"], 3), m["status"]) for m in out]))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "size": args.size, "results": out}, indent=2))


if __name__ == "__main__":
    main()
