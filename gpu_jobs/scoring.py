"""Scoring jobs: a causal LM over many samples, scores into Parquet side tables and the catalog.

Jobs (spec gateau.md 3.2-3.3):

- ``perplexity``: the whole text; longer than the window, a sliding window with a stride (every
  token after the first predicted once, with up to ``window - stride`` tokens of context).
- ``response-loglik``: a prompt and a response; loss on response tokens only. Too long, the
  sequence is cut from the left and the response start is computed after the cut.
- ``segment-ppl``: the response (after the instruction) given one context segment at a time; the
  segments of a sample have one length, so they batch with no padding at all.
- ``segment-attention``: one forward over context + instruction + response; for each layer, the
  attention of the response queries to the keys of each context segment (mean over heads, keys of
  the segment and response queries), then the mean over layers. The attention rows of the response
  queries are computed in chunks inside the model's attention call: the full matrix never exists.
  Grouped-query attention is handled by repeating the key heads.

Work is cut into rows (a window, a segment), sorted by length and batched by a token budget
(padded rows x longest row <= budget), not by a fixed batch size. Samples are processed in parts
of fixed composition; the new scores of each part go to ``part-<hash of its samples>.parquet`` and
then to the catalog, so a killed job rerun skips every sample already scored for the same (job,
model, revision, settings) and writes the same values.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from gpu_jobs.attention import segment_attention
from gpu_jobs.lm import RopeExtension

JOBS = ("perplexity", "response-loglik", "segment-ppl", "segment-attention")

SIDE_SCHEMA = pa.schema([pa.field("sample_id", pa.string()), pa.field("metric", pa.string()),
                         pa.field("value", pa.float64())])


@dataclass(frozen=True)
class ScoreSettings:
    """Everything that changes a score's value (the batch budget does not, and is left out of the hash)."""

    job: str
    max_tokens: int | None = None  # the window; default: the model's positions
    stride: int | None = None  # perplexity: tokens the window advances; default: half the window
    text_field: str = "text"
    prompt_field: str = "prompt"
    response_field: str = "response"
    context_field: str = "context"
    instruction_field: str = "instruction"
    segment_tokens: int = 128  # [gateau: 128]
    max_segments: int = 500  # [gateau: 500, an order-preserving random subset beyond]
    max_instruction_tokens: int = 500  # [gateau]
    max_response_tokens: int = 500  # [gateau: CAM truncates the response; HMG does not]
    seed: int = 11  # [gateau]
    # CAM's three-block layout (spec gateau.md 3.1, 3.3): a segment (or the whole context for the
    # attention) in the input block, then the instruction block, then the response, after BOS
    input_header: str = "### Input:\n"
    instruction_header: str = "\n\n### Instruction:\n"
    response_header: str = "\n\n### Response:\n"
    bos: bool = True  # put the tokenizer's BOS first (response-loglik and CAM), so no context token is the sink
    rope: RopeExtension | None = None  # the model's RoPE extension: it changes every value
    token_budget: int = field(default=8192, compare=False)

    def __post_init__(self):
        if self.job not in JOBS:
            raise ValueError(f"unknown job '{self.job}' (one of {', '.join(JOBS)})")
        if self.max_tokens is not None and self.max_tokens < 2:
            raise ValueError(f"the window (max_tokens) must be at least 2 tokens, got {self.max_tokens}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"the stride must be at least 1 token, got {self.stride}")
        if self.stride is not None and self.max_tokens is not None and self.stride >= self.max_tokens:
            raise ValueError(f"the stride ({self.stride}) is not smaller than the window ({self.max_tokens}): the "
                             "first token of each window after the first would never be scored (it has no context "
                             "in its window); use a stride below the window, e.g. half of it")
        for name in ("token_budget", "segment_tokens", "max_segments"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def check_window(self, window: int) -> None:
        """The stride against the window actually used (the model's, when max_tokens is not given)."""
        if self.stride is not None and self.stride >= window:
            raise ValueError(f"the stride ({self.stride}) is not smaller than the window ({window} tokens): the "
                             "first token of each window after the first would never be scored; use a stride "
                             "below the window, e.g. half of it")

    def content_hash(self, record: dict) -> str:
        """A hash of what this job reads of a record: a score is reused only for the same content."""
        required, optional = self.fields()
        payload = {f: record.get(f) for f in [*required, *optional]}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:24]

    def invalid(self, record: dict) -> tuple[str, str] | None:
        """(reason, detail) when a record cannot be scored: a required field missing, not text, or empty."""
        required, optional = self.fields()
        for f in required:
            v = record.get(f)
            if v is None:
                return "missing field", f"'{f}' is null or absent"
            if not isinstance(v, str):
                return "wrong type", f"'{f}' is {type(v).__name__}, needs a string"
            if not v.strip():
                return "empty text", f"'{f}' is empty"
        for f in optional:
            v = record.get(f)
            if v is not None and not isinstance(v, str):
                return "wrong type", f"'{f}' is {type(v).__name__}, needs a string"
        return None

    def fields(self) -> tuple[list[str], list[str]]:
        """(columns the job needs, columns it reads when present): the instruction is optional."""
        if self.job == "perplexity":
            return [self.text_field], []
        if self.job == "response-loglik":
            return [self.prompt_field, self.response_field], []
        return [self.context_field, self.response_field], [self.instruction_field]

    def identity(self) -> dict:
        d = asdict(self)
        d.pop("token_budget")
        return d

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Row:
    """One forward-pass sequence: token ids and which positions' next-token predictions count."""

    sample: int  # index of the sample
    ids: list[int]
    targets: np.ndarray  # bool[len(ids)]: position i counts if token i is predicted (from i - 1)
    tag: int = 0  # window or segment number


# -- building rows -------------------------------------------------------------------------------------


def perplexity_rows(k: int, ids: list[int], window: int, stride: int) -> list[Row]:
    """The sliding-window rows of one text (one row when the window covers it)."""
    n = len(ids)
    rows, prev_end, begin, w = [], 0, 0, 0
    while True:
        end = min(begin + window, n)
        t = np.zeros(end - begin, dtype=bool)
        t[max(1, prev_end - begin):] = True  # tokens not yet predicted; the text's first has no context
        rows.append(Row(k, ids[begin:end], t, w))
        prev_end, w = end, w + 1
        if end >= n:
            return rows
        begin += stride


def response_row(k: int, prompt: list[int], response: list[int], window: int) -> tuple[Row, int]:
    """(row, tokens cut from the left). The response start is found after the cut."""
    full = prompt + response
    cut = max(0, len(full) - window)
    start = max(0, len(prompt) - cut)
    t = np.zeros(len(full) - cut, dtype=bool)
    t[max(1, start):] = True
    return Row(k, full[cut:], t), cut


def context_segments(n_context: int, seg: int, max_segments: int, seed: int, sample_id: str) -> list[int]:
    """Indices of the whole segments of a context; beyond ``max_segments``, an order-preserving
    random subset drawn from (seed, sample id), so it does not depend on batching or order."""
    n = n_context // seg
    if n <= max_segments:
        return list(range(n))
    h = int.from_bytes(hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()[:8], "big")
    return sorted(np.random.default_rng(h).choice(n, max_segments, replace=False).tolist())


# -- batching -------------------------------------------------------------------------------------------


def budget_batches(rows: list[Row], budget: int) -> Iterator[list[Row]]:
    """Rows sorted by length (longest first), grouped so that rows x longest <= budget."""
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i].ids), i))
    batch: list[Row] = []
    longest = 0
    for i in order:
        r = rows[i]
        new_longest = max(longest, len(r.ids))
        if batch and new_longest * (len(batch) + 1) > budget:
            yield batch
            batch, new_longest = [], len(r.ids)
        batch.append(r)
        longest = new_longest
    if batch:
        yield batch


def padded_batches(rows: list[Row], batch_size: int) -> Iterator[list[Row]]:
    """The naive baseline: rows in input order, a fixed number per batch (bench only)."""
    for i in range(0, len(rows), batch_size):
        yield rows[i:i + batch_size]


LOGIT_CHUNK = 4096


def row_nll(lm, batch: list[Row]) -> list[tuple[float, int]]:
    """(summed NLL, tokens) of each row's target positions, right-padded, logits only where needed."""
    import torch

    dev = lm.device
    longest = max(len(r.ids) for r in batch)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(batch), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    targets = torch.zeros((len(batch), longest), dtype=torch.bool)
    for b, r in enumerate(batch):
        ids[b, :len(r.ids)] = torch.tensor(r.ids)
        mask[b, :len(r.ids)] = 1
        targets[b, :len(r.ids)] = torch.from_numpy(r.targets)
    ids, mask, targets = ids.to(dev), mask.to(dev), targets.to(dev)
    with torch.inference_mode():
        hidden = lm.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        pred = targets[:, 1:]  # position i + 1 is predicted from hidden state i
        h = hidden[:, :-1][pred]
        gold = ids[:, 1:][pred]
        head = lm.model.get_output_embeddings()
        cap = getattr(lm.model.config, "final_logit_softcapping", None)
        parts = []
        for a in range(0, len(h), LOGIT_CHUNK):  # vocabulary-wide logits for a few thousand tokens at a time
            logits = head(h[a:a + LOGIT_CHUNK])
            if cap:
                logits = torch.tanh(logits / cap) * cap
            parts.append(torch.nn.functional.cross_entropy(logits.float(), gold[a:a + LOGIT_CHUNK], reduction="none"))
        nll = torch.cat(parts) if parts else torch.zeros(0, device=h.device)
    counts = pred.sum(dim=1).tolist()
    sums = torch.split(nll.double(), counts)
    return [(float(s.sum()), int(c)) for s, c in zip(sums, counts, strict=True)]


def labelled_logps(lm, sequences: list[list[int]], labels: list[list[int]]) -> list[float]:
    """Per sequence, the summed log-probability of its labelled tokens (label != -100, each token
    predicted from the one before it), one sequence per forward pass (no padding touches them), the
    log-softmax over the vocabulary taken in float64: a DPO loss reads differences of these sums,
    and float32 over a 49k vocabulary drifts by 1e-4 on a 60-token answer."""
    import torch

    out = []
    head = lm.model.get_output_embeddings()
    cap = getattr(lm.model.config, "final_logit_softcapping", None)
    for ids, lab in zip(sequences, labels, strict=True):
        at = [i for i in range(1, len(ids)) if lab[i] != -100]
        if not at:
            out.append(0.0)
            continue
        x = torch.tensor([list(ids)], device=lm.device)
        with torch.inference_mode():
            hidden = lm.model.base_model(input_ids=x).last_hidden_state[0]
            logits = head(hidden[[i - 1 for i in at]]).double()
            if cap:
                logits = torch.tanh(logits / cap) * cap
            logp = torch.log_softmax(logits, dim=-1)
            gold = torch.tensor([ids[i] for i in at], device=logp.device)
            out.append(float(logp.gather(1, gold[:, None]).sum()))
    return out



# -- samples -> scores -------------------------------------------------------------------------------


def _tok(lm, text: str, special: bool) -> list[int]:
    return list(lm.tokenizer(text, add_special_tokens=special)["input_ids"])


def _bos(lm, s: ScoreSettings) -> list[int]:
    bos = lm.tokenizer.bos_token_id
    return [int(bos)] if s.bos and bos is not None else []


def cam_layout(lm, s: ScoreSettings, context: list[int], instruction: list[int], response: list[int]
               ) -> tuple[list[int], int, int]:
    """(ids, where the context starts, where the response starts) of the three-block layout:
    BOS, input header, context (one segment, or all of it), instruction block, response block."""
    head = _bos(lm, s) + _tok(lm, s.input_header, False)
    middle = _tok(lm, s.instruction_header, False) + instruction + _tok(lm, s.response_header, False)
    ids = head + context + middle + response
    return ids, len(head), len(head) + len(context) + len(middle)


def _attention_scores(lm, s: ScoreSettings, records: list[dict], window: int, add, on_tokens) -> None:
    """segment-attention: per sample, the response's mean attention to each chosen context segment."""
    for i, r in enumerate(records):
        ctx = _tok(lm, r.get(s.context_field) or "", False)
        instr = _tok(lm, r.get(s.instruction_field) or "", False)[:s.max_instruction_tokens]
        resp = _tok(lm, r[s.response_field], False)[:s.max_response_tokens]
        seg = s.segment_tokens
        # The same segments as segment-ppl (numbered over the whole context); a context longer
        # than the window loses whole segments from its start, and those are not scored.
        chosen = context_segments(len(ctx), seg, s.max_segments, s.seed, r["id"])
        overhead = len(cam_layout(lm, s, [], instr, resp)[0])  # BOS, headers, instruction, response
        room = max(0, window - overhead)
        cut = 0 if len(ctx) <= room else math.ceil((len(ctx) - room) / seg) * seg
        ctx = ctx[cut:]
        chosen = [j for j in chosen if j * seg >= cut]
        add(i, "segments", len(chosen))
        add(i, "response_tokens", len(resp))  # after the max_response_tokens cut (CAM's, not HMG's)
        if cut:
            add(i, "segments_cut_by_window", cut // seg)
        if not chosen or not resp:
            continue
        ids, c0, q0 = cam_layout(lm, s, ctx, instr, resp)
        att = segment_attention(lm, ids, q0, [c0 + j * seg - cut for j in chosen], seg)
        for j, v in zip(chosen, att.mean(axis=0), strict=True):
            add(i, f"segment_attention:{j:04d}", v)
        if on_tokens:
            on_tokens(len(ids))


def score_part(lm, s: ScoreSettings, records: list[dict], on_tokens: Callable[[int], None] | None = None,
               batcher: Callable[[list[Row]], Iterator[list[Row]]] | None = None) -> list[dict]:
    """Scores of a part's samples as (sample_id, metric, value) rows, in sample order. ``batcher``
    replaces the token-budget batching (benchmarks compare against naive fixed-size batches)."""
    window = s.max_tokens or lm.max_positions
    out: list[dict] = []

    def add(i, metric, value):
        out.append({"sample_id": records[i]["id"], "metric": metric, "value": float(value)})

    if s.job == "segment-attention":
        _attention_scores(lm, s, records, window, add, on_tokens)
        return out
    rows: list[Row] = []
    for i, r in enumerate(records):
        if s.job == "perplexity":
            ids = _tok(lm, r[s.text_field], True)
            rows += perplexity_rows(i, ids, window, s.stride or max(1, window // 2))
            add(i, "tokens", len(ids))
        elif s.job == "response-loglik":
            row, cut = response_row(i, _bos(lm, s) + _tok(lm, r[s.prompt_field], False),
                                    _tok(lm, r[s.response_field], False), window)
            rows.append(row)
            add(i, "truncated_tokens", cut)
        elif s.job == "segment-ppl":
            ctx = _tok(lm, r.get(s.context_field) or "", False)
            instr = _tok(lm, r.get(s.instruction_field) or "", False)[:s.max_instruction_tokens]
            resp = _tok(lm, r[s.response_field], False)[:s.max_response_tokens]
            chosen = context_segments(len(ctx), s.segment_tokens, s.max_segments, s.seed, r["id"])
            add(i, "segments", len(chosen))
            add(i, "response_tokens", len(resp))
            for j in chosen:
                ids, _, q0 = cam_layout(lm, s, ctx[j * s.segment_tokens:(j + 1) * s.segment_tokens], instr, resp)
                t = np.zeros(len(ids), dtype=bool)
                t[q0:] = True
                rows.append(Row(i, ids, t, j))
        else:
            raise ValueError(f"unknown job '{s.job}' (one of {', '.join(JOBS)})")
    sums: dict[tuple[int, int], list[float]] = {}
    for batch in (batcher or (lambda rs: budget_batches(rs, s.token_budget)))(rows):
        for r, (nll, n) in zip(batch, row_nll(lm, batch), strict=True):
            key = (r.sample, r.tag if s.job == "segment-ppl" else 0)
            acc = sums.setdefault(key, [0.0, 0])
            acc[0] += nll
            acc[1] += n
        if on_tokens:
            on_tokens(sum(len(r.ids) for r in batch))
    for (i, tag), (nll, n) in sorted(sums.items()):
        if s.job == "segment-ppl":
            if n:
                add(i, f"segment_ppl:{tag:04d}", math.exp(nll / n))
            continue
        prefix = "" if s.job == "perplexity" else "response_"
        add(i, f"{prefix}scored_tokens", n)
        if n:  # a one-token text has nothing to predict: no perplexity (never NaN)
            add(i, f"{prefix}nll_sum", nll)
            add(i, f"{prefix}ppl", math.exp(nll / n))
    position = {r["id"]: i for i, r in enumerate(records)}
    return sorted(out, key=lambda x: (position[x["sample_id"]], x["metric"]))


