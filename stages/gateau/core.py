"""GATEAU selection (spec gateau.md 3.1-3.4, 5, 6): pure functions from stored scores to a ranking.

No model here: a new alpha, ratio or normalisation is a rerun of :func:`rank` over the scores the
scoring jobs left (``longforge select``). Choices the spec marks unverified are options, recorded
with the result:

- ``ppl_transform`` (HMG input): ``raw`` PPL as the code [default], ``log`` PPL, or ``rank``.
- ``pool_norm`` (both terms, same scale): ``softmax`` over the pool as the code [default],
  ``minmax`` or ``rank`` (share of the pool below).
- ``importance``: ``softmax(-log PPL_j)`` [default, i.e. proportional to 1/PPL] or ``softmax(-PPL_j)``.
- ``cam_transform``: ``1 - cos`` [default: difficulty] or ``cos``.
- ``term_scale``: ``minmax`` [default, ours]: each raw term min-max scaled to [0, 1] over the pool
  before the pool normalisation, so that HMG (raw in [-1, 1]) and CAM (raw in [0, 1]) enter it on
  one scale and alpha weighs like against like; ``none``: the raw terms, as the code.

Each ranking records both terms' spreads (standard deviation and range after the pool
normalisation) so that what alpha weighs can be seen.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

LAYOUT = "### Input:\n{context}\n\n### Instruction:\n{instruction}\n\n### Response:\n"


@dataclass(frozen=True)
class SelectOptions:
    alpha: float = 0.8  # [paper: 0.8 real-world, 0.7 limited]
    ratio: float = 0.1  # [paper: 0.1, 0.3, 0.5]
    ppl_transform: str = "raw"  # raw | log | rank
    pool_norm: str = "softmax"  # softmax | minmax | rank
    importance: str = "inv_ppl"  # inv_ppl (softmax(-log ppl)) | neg_ppl (softmax(-ppl))
    cam_transform: str = "one_minus_cos"  # one_minus_cos | cos
    no_segments: str = "median"  # median | zero: the CAM of samples with no context segment
    term_scale: str = "minmax"  # minmax | none: both raw terms scaled to [0, 1] before pool_norm

    def as_dict(self) -> dict:
        return asdict(self)


def split_messages(messages: list[dict]) -> tuple[str, str, str] | None:
    """(context, instruction, response): the last user turn before the last assistant turn, split at
    its last blank line (reference rule; no blank line: all instruction, empty context)."""
    last_assistant = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last_assistant is None:
        return None
    user = next((messages[i] for i in range(last_assistant - 1, -1, -1) if messages[i].get("role") == "user"), None)
    if user is None:
        return None
    content = user.get("content") or ""
    cut = content.rfind("\n\n")
    context, instruction = (content[:cut], content[cut + 2:]) if cut >= 0 else ("", content)
    return context, instruction, messages[last_assistant].get("content") or ""


def minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(x)), float(np.max(x))
    return np.zeros_like(x, dtype=np.float64) if hi == lo else (x - lo) / (hi - lo)  # spec 5: min = max -> 0


def rank_share(x: np.ndarray) -> np.ndarray:
    """Share of the pool strictly below each value (ties share a value), in [0, 1)."""
    s = np.sort(x)
    return np.searchsorted(s, x, side="left") / len(x)


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - np.max(x))
    return z / z.sum()


def pool_normalise(x: np.ndarray, how: str) -> np.ndarray:
    if how == "softmax":
        return softmax(x)
    if how == "minmax":
        return minmax(x)
    if how == "rank":
        return rank_share(x)
    raise ValueError(f"pool_norm '{how}' (softmax, minmax, rank)")


def hmg_raw(ppl_short: np.ndarray, ppl_long: np.ndarray, transform: str = "raw") -> np.ndarray:
    """Norm(PPL_short) - Norm(PPL_long), each min-max normalised over the pool."""
    f = {"raw": lambda p: p, "log": np.log, "rank": rank_share}[transform]
    return minmax(f(np.asarray(ppl_short, np.float64))) - minmax(f(np.asarray(ppl_long, np.float64)))


def importance(seg_ppl: np.ndarray, how: str = "inv_ppl") -> np.ndarray:
    p = np.asarray(seg_ppl, np.float64)
    return softmax(-np.log(p)) if how == "inv_ppl" else softmax(-p)


def cas(imp: np.ndarray, att: np.ndarray) -> float:
    """Cosine of the importance and the (renormalised) attention vectors."""
    att = np.asarray(att, np.float64)
    att = att / att.sum() if att.sum() > 0 else att
    denom = float(np.linalg.norm(imp) * np.linalg.norm(att))
    return float(imp @ att / denom) if denom else 0.0


@dataclass
class Ranked:
    ids: list[str]
    hmg_raw: np.ndarray
    hmg: np.ndarray
    cas: np.ndarray  # nan where a sample had no segments
    cam_raw: np.ndarray
    cam: np.ndarray
    score: np.ndarray
    rank: np.ndarray  # 1 = best
    selected: np.ndarray  # bool
    options: SelectOptions

    def spreads(self) -> dict[str, float]:
        """Each term's spread over the pool as it enters the score: what alpha weighs."""
        out = {}
        for name, x in (("hmg", self.hmg), ("cam", self.cam)):
            out[f"{name}_std"] = float(np.std(x)) if len(x) else 0.0
            out[f"{name}_range"] = float(np.ptp(x)) if len(x) else 0.0
        out["cam_to_hmg_std_ratio"] = out["cam_std"] / out["hmg_std"] if out["hmg_std"] else float("inf")
        return out


def rank(ids: list[str], ppl_short, ppl_long, seg_ppl: list, seg_attn: list, o: SelectOptions) -> Ranked:
    """Scores, ranks and the top ceil(ratio * N) of a pool; ties broken by id."""
    n = len(ids)
    if o.term_scale not in ("minmax", "none"):
        raise ValueError(f"term_scale '{o.term_scale}' (minmax, none)")
    scale = minmax if o.term_scale == "minmax" else (lambda x: np.asarray(x, np.float64))
    raw = hmg_raw(ppl_short, ppl_long, o.ppl_transform)
    hmg = pool_normalise(scale(raw), o.pool_norm)
    cos = np.full(n, np.nan)
    for i in range(n):
        if len(seg_ppl[i]) and len(seg_attn[i]):
            if len(seg_ppl[i]) != len(seg_attn[i]):
                raise ValueError(f"sample {ids[i]}: {len(seg_ppl[i])} segment PPLs but {len(seg_attn[i])} attentions")
            cos[i] = cas(importance(seg_ppl[i], o.importance), seg_attn[i])
    cam_raw = 1 - cos if o.cam_transform == "one_minus_cos" else cos
    have = ~np.isnan(cam_raw)
    fill = float(np.median(cam_raw[have])) if have.any() and o.no_segments == "median" else 0.0
    cam_raw = np.where(have, cam_raw, fill)
    cam = pool_normalise(scale(cam_raw), o.pool_norm)
    score = o.alpha * hmg + (1 - o.alpha) * cam
    order = sorted(range(n), key=lambda i: (-score[i], ids[i]))
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = np.arange(1, n + 1)
    k = math.ceil(round(o.ratio * n, 9))  # 0.1 * 30 is 3.0000000000000004
    return Ranked(list(ids), raw, hmg, cos, cam_raw, cam, score, ranks, ranks <= k, o)
