"""HMG: two homologous models (a short and a long context window) over the same response tokens
(GATEAU, spec 3.2): the rows each model scores and the per-sample scores."""

from __future__ import annotations

import math

import numpy as np

from gpu_jobs.scoring import Row, _tok, budget_batches, row_nll


def same_tokenizer(a, b) -> bool:
    """Homologous models share a tokenizer: the same vocabulary, ids and special tokens."""
    return a.get_vocab() == b.get_vocab() and a.bos_token_id == b.bos_token_id


def hmg_rows(k: int, prompt: list[int], response: list[int], windows: tuple[int, ...]) -> tuple[list[Row], int]:
    """(one row per window, tokens scored). Each row keeps the last ``window`` tokens (left
    truncation) and scores the same response tokens: the last ones that fit in every window, so the
    two perplexities HMG subtracts are over one set of tokens (spec gateau.md 3.2, 5)."""
    n_scored = min(len(response), min(windows) - 1)
    full = prompt + response
    rows = []
    for w in windows:
        ids = full[max(0, len(full) - w):]
        t = np.zeros(len(ids), dtype=bool)
        t[len(ids) - n_scored:] = True
        rows.append(Row(k, ids, t))
    return rows, n_scored


def hmg_scores(short_lm, long_lm, records: list[dict], windows: tuple[int, int], prompt_field: str = "prompt",
               response_field: str = "response", bos: bool = True, token_budget: int = 8192) -> list[dict]:
    """Per record: the response perplexity under the short and the long model over the same
    response tokens (``short``, ``long``: {response_ppl, response_nll_sum}), ``response_tokens``,
    ``response_scored_tokens`` and ``prompt_tokens_cut`` (by the long window)."""
    tok = long_lm.tokenizer
    first = [int(tok.bos_token_id)] if bos and tok.bos_token_id is not None else []
    out, short_rows, long_rows = [], [], []
    for i, r in enumerate(records):
        prompt = first + _tok(long_lm, r[prompt_field], False)
        response = _tok(long_lm, r[response_field], False)
        (short_row, long_row), n = hmg_rows(i, prompt, response, windows)
        short_rows.append(short_row)
        long_rows.append(long_row)
        out.append({"response_tokens": len(response), "response_scored_tokens": n,
                    "sample_tokens": len(prompt) + len(response),
                    "prompt_tokens_cut": max(0, len(prompt) + len(response) - windows[1])})
    for name, lm, rows in (("short", short_lm, short_rows), ("long", long_lm, long_rows)):
        for batch in budget_batches([r for r in rows if r.targets.any()], token_budget):
            for row, (nll, n) in zip(batch, row_nll(lm, batch), strict=True):
                want = out[row.sample]["response_scored_tokens"]
                if n != want:
                    raise AssertionError(f"the {name} model scored {n} response tokens, not {want}")
                out[row.sample][name] = {"response_nll_sum": nll, "response_ppl": math.exp(nll / n)}
    return out


