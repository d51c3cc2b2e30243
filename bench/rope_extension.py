"""Perplexity past SmolLM2's trained context, with and without a training-free RoPE extension
(GATEAU spec 3.2: the short-window model is scored on the whole sample through one), on a real
text: the first book of the KJV Bible, in one run.

    .venv/bin/python bench/rope_extension.py [--tokens 12288] [--scored 2048] [--factor 2]

Every contender scores the same last --scored tokens of a --tokens long prefix of the book with
one forward pass over the whole prefix (so those tokens sit at positions past 8192, the trained
length). The anchor sees only the 8192 tokens that end the prefix: the same scored tokens at
positions the model was trained on.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from pipelines.engine.progress import format_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=12288)
    ap.add_argument("--scored", type=int, default=2048)
    ap.add_argument("--factor", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()

    import torch
    from transformers.utils import logging

    from gpu_jobs.lm import RopeExtension, load_causal_lm
    from gpu_jobs.scoring import Row, row_nll
    from pipelines.commands import corpora

    logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    book = next(d for d in corpora.CORPORA["kjv_books"].build() if len(d["text"]) > 8 * args.tokens)
    contenders = [("anchor: last 8192 tokens, plain RoPE", None, 8192), ("plain RoPE, whole prefix", None, None)]
    contenders += [(f"{k} x{args.factor:g}, whole prefix", RopeExtension(k, args.factor), None)
                   for k in ("linear", "dynamic", "yarn")]
    rows = []
    for name, rope, window in contenders:
        lm = load_causal_lm("smollm2-135m", device="cpu", rope=rope)
        ids = lm.tokenizer(book["text"], add_special_tokens=False)["input_ids"][:args.tokens]
        if len(ids) < args.tokens:
            raise SystemExit(f"the book has only {len(ids)} tokens")
        ids = ids[-window:] if window else ids
        targets = np.zeros(len(ids), dtype=bool)
        targets[-args.scored:] = True
        t0 = time.perf_counter()
        (nll, n), = row_nll(lm, [Row(0, ids, targets)])
        rows.append([name, f"{len(ids):,}", f"{len(ids) - args.scored:,}..{len(ids) - 1:,}", f"{n:,}",
                     f"{math.exp(nll / n):.2f}", f"{time.perf_counter() - t0:.1f}"])
    print(f"SmolLM2-135M (trained on 8192 positions), {book['id']!r} of kjv_books, the last {args.scored:,} of its "
          f"first {args.tokens:,} tokens scored; {args.threads} threads, fp32")
    print(format_table(["contender", "tokens in", "scored positions", "scored", "ppl", "seconds"], rows))


if __name__ == "__main__":
    main()
