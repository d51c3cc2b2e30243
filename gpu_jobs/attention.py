"""CAM's attention from the response to each context segment: a capturing attention function
registered with transformers, SDPA for the output and per-segment means of the response queries'
attention rows, chunk by chunk (GATEAU, spec 3.3)."""

from __future__ import annotations

import math

import numpy as np


class _Capture:
    """What the capturing attention function needs for the forward in progress, and what it leaves."""

    active = False
    q_start = 0  # first response position
    q_end = 0
    seg_of_key: object = None  # LongTensor [keys]: segment number, or -1 outside the kept segments
    n_segments = 0
    seg_tokens = 1
    row_chunk_bytes = 256 << 20
    per_layer: list = []


CAPTURE = _Capture()
_REGISTERED = "longforge_capture"


def capturing_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA for the output; for the response queries, their attention rows chunk by chunk, reduced at
    once to per-segment means (grouped-query key heads repeated to the query heads)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    out = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                 **kwargs)
    if not CAPTURE.active:
        return out
    heads, n_keys, d = query.shape[1], key.shape[2], query.shape[-1]
    scale = scaling if scaling is not None else 1 / math.sqrt(d)
    k = key[0].float()
    if k.shape[0] != heads:
        k = k.repeat_interleave(heads // k.shape[0], dim=0)
    seg = CAPTURE.seg_of_key
    onehot = torch.zeros((n_keys, CAPTURE.n_segments), dtype=torch.float32, device=k.device)
    keep = seg >= 0
    onehot[torch.nonzero(keep).squeeze(1), seg[keep]] = 1.0 / CAPTURE.seg_tokens
    total = torch.zeros(CAPTURE.n_segments, dtype=torch.float64, device=k.device)
    step = max(1, CAPTURE.row_chunk_bytes // (4 * heads * n_keys))
    key_pos = torch.arange(n_keys, device=k.device)
    for a in range(CAPTURE.q_start, CAPTURE.q_end, step):
        b = min(a + step, CAPTURE.q_end)
        q = query[0, :, a:b].float()
        scores = torch.einsum("hqd,hkd->hqk", q, k) * scale
        if attention_mask is not None and attention_mask.dim() == 4:
            m = attention_mask[0, 0, a:b]
            scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
        else:
            future = key_pos[None, :] > torch.arange(a, b, device=k.device)[:, None]
            scores = scores.masked_fill(future[None], float("-inf"))
        probs = torch.softmax(scores, dim=-1).mean(dim=0)  # [queries, keys], mean over heads
        total += (probs @ onehot).sum(dim=0).double()
    CAPTURE.per_layer.append((total / (CAPTURE.q_end - CAPTURE.q_start)).cpu().numpy())
    return out


def _register_capture() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(_REGISTERED, capturing_attention)
    AttentionMaskInterface.register(_REGISTERED, sdpa_mask)


def segment_attention(lm, ids: list[int], q_start: int, seg_starts: list[int], seg_tokens: int) -> np.ndarray:
    """float64[layers, segments]: per layer, mean over response queries (positions q_start..end) of
    the mean over heads of the attention to each segment's keys, averaged over its keys."""
    import torch

    _register_capture()
    seg_of_key = torch.full((len(ids),), -1, dtype=torch.long)
    for j, s in enumerate(seg_starts):
        seg_of_key[s:s + seg_tokens] = j
    CAPTURE.seg_of_key = seg_of_key.to(lm.device)
    CAPTURE.n_segments, CAPTURE.seg_tokens = len(seg_starts), seg_tokens
    CAPTURE.q_start, CAPTURE.q_end = q_start, len(ids)
    CAPTURE.per_layer = []
    previous = lm.model.config._attn_implementation
    lm.model.set_attn_implementation(_REGISTERED)
    CAPTURE.active = True
    try:
        with torch.inference_mode():
            lm.model.base_model(input_ids=torch.tensor([ids], device=lm.device))
    finally:
        CAPTURE.active = False
        lm.model.set_attn_implementation(previous)
    return np.stack(CAPTURE.per_layer)


