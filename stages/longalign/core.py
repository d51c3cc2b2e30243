"""LongAlign (Bai et al., EMNLP 2024 Findings; spec ../shared/specs/longalign.md): the pure parts.

Self-instruct prompts and question parsing (3.1), chat tokenisation with assistant-only labels
(3.2), next-fit packing that keeps the last partial pack, with per-token loss weights 1/N_i and
sequence boundaries (3.3-3.4), and sorted batching (3.5).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

T = TypeVar("T")

TASK_TYPES = ("general", "summary", "reasoning", "extraction")
_TASK_HINT = {
    "general": "",
    "summary": " The questions should require summarising or integrating information from several parts of "
               "the text.",
    "reasoning": " The questions should require multi-hop reasoning over the text.",
    "extraction": " The questions should ask for specific information stated in the text.",
}
ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\ufeff"))


# Spec 3.1: "Chinese documents use translated prompts" (our translation of the English prompt above).
_TASK_HINT_ZH = {
    "general": "",
    "summary": "这些问题应当需要总结或整合文本中多个部分的信息。",
    "reasoning": "这些问题应当需要基于文本进行多步推理。",
    "extraction": "这些问题应当询问文本中明确给出的具体信息。",
}


def question_prompt(document: str, task_type: str, language: str | None = None) -> list[dict]:
    """Spec 3.1 step 2: the document, then a request for five numbered, diverse questions; in
    Chinese for Chinese documents (``language`` zh, zh-cn, zh-Hans, ...)."""
    if (language or "").lower().startswith("zh"):
        ask = ("请根据上面的文本，用文本所用的语言写出5个问题，编号为“1:”到“5:”，每行一个，问题要多样，并覆盖文本的"
               f"各个部分。{_TASK_HINT_ZH[task_type]}只写出问题。")
    else:
        ask = ("Given the text above, write 5 questions in the language of the text, numbered '1:' to '5:', one per "
               f"line, diverse and covering all parts of the text.{_TASK_HINT[task_type]} Write only the questions.")
    return [{"role": "user", "content": f"{document}\n\n{ask}"}]


def answer_prompt(document: str, question: str) -> list[dict]:
    return [{"role": "user", "content": f"{document}\n\n{question}"}]


_NUMBERED = re.compile(r"^\s*(?:Q(?:uestion)?\s*|问题\s*)?(\d{1,2})\s*[:.)：、．）]\s*(.+?)\s*$", re.IGNORECASE)


def parse_questions(text: str) -> list[str]:
    """The numbered questions of a reply ('1:', '1.', '1)', 'Q1:'), in order, without duplicates."""
    out = []
    for line in text.splitlines():
        m = _NUMBERED.match(line)
        if m and len(m.group(2)) > 3 and m.group(2) not in out:
            out.append(m.group(2))
    return out


# -- tokenisation -----------------------------------------------------------------------------------


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]  # -100 except assistant tokens (and the end of each assistant turn)

    @property
    def n_target(self) -> int:
        return sum(1 for x in self.labels if x != -100)


def tokenize_chat(tokenizer, messages: list[dict]) -> Tokenized | None:
    """Render with the model's chat template turn by turn; label the assistant turns only (with
    the tokens that close them). Zero-width characters leave assistant turns; a trailing unpaired
    user turn is dropped. None when nothing is left to learn from."""
    msgs = [dict(m) for m in messages]
    while msgs and msgs[-1].get("role") != "assistant":
        msgs.pop()
    if not msgs:
        return None
    for m in msgs:
        if m.get("role") == "assistant":
            m["content"] = str(m.get("content") or "").translate(ZERO_WIDTH)
    ids: list[int] = []
    labels: list[int] = []
    for k in range(len(msgs)):
        upto = tokenizer.apply_chat_template(msgs[:k + 1], tokenize=True, add_generation_prompt=False)
        upto = list(upto["input_ids"] if isinstance(upto, dict) or hasattr(upto, "keys") else upto)
        if upto[:len(ids)] != ids:
            raise ValueError("the chat template does not render a conversation as a prefix of its extension")
        new = upto[len(ids):]
        if msgs[k].get("role") == "assistant":
            head = tokenizer.apply_chat_template(msgs[:k], tokenize=True, add_generation_prompt=True)
            head = list(head["input_ids"] if isinstance(head, dict) or hasattr(head, "keys") else head)
            prompt_part = len(head) - len(ids) if head[:len(ids)] == ids else 0
            labels += [-100] * prompt_part + new[prompt_part:]
        else:
            labels += [-100] * len(new)
        ids = upto
    t = Tokenized(ids, labels)
    return t if t.n_target else None


def apply_overflow(t: Tokenized, max_len: int, policy: str) -> Tokenized | None:
    """skip [default] | truncate_right [LongAlign] | truncate_left_keep_head (the first 2 tokens kept)."""
    if len(t.input_ids) <= max_len:
        return t
    if policy == "skip":
        return None
    if policy == "truncate_right":
        out = Tokenized(t.input_ids[:max_len], t.labels[:max_len])
    elif policy == "truncate_left_keep_head":
        cut = len(t.input_ids) - max_len
        out = Tokenized(t.input_ids[:2] + t.input_ids[2 + cut:], t.labels[:2] + t.labels[2 + cut:])
    else:
        raise ValueError(f"overflow policy '{policy}'")
    return out if out.n_target else None


# -- packing and batching ----------------------------------------------------------------------------


@dataclass
class Pack:
    rows: list[int]  # indices of the sequences, in order
    cu_seqlens: list[int]  # 0, end of seq 1, ..., and finally the capacity L


def next_fit(rows: Iterable[T], size: Callable[[T], int], capacity: int, skipped: list[T]) -> Iterator[list[T]]:
    """Next-fit over a stream (spec 3.3): each pack's rows as soon as the next row does not fit; the
    last partial pack is kept (the reference drops it). Rows longer than ``capacity`` go to
    ``skipped``. Holds one pack."""
    pack: list[T] = []
    used = 0
    for row in rows:
        n = size(row)
        if n > capacity:
            skipped.append(row)
            continue
        if pack and used + n > capacity:
            yield pack
            pack, used = [], 0
        pack.append(row)
        used += n
    if pack:
        yield pack


def first_fit_decreasing(rows: Iterable[T], size: Callable[[T], int], capacity: int, skipped: list[T],
                         buffer: int = 1000) -> Iterator[list[T]]:
    """The optional better packer of spec 3.3: within buffers of ``buffer`` rows that fit (in the
    stream's order), longest first into the first pack with room. Fewer, fuller packs than
    next-fit; holds one buffer."""
    fits: list[T] = []
    for row in rows:
        if size(row) > capacity:
            skipped.append(row)
            continue
        fits.append(row)
        if len(fits) == buffer:
            yield from _first_fit(fits, size, capacity)
            fits = []
    yield from _first_fit(fits, size, capacity)


def _first_fit(fits: list[T], size: Callable[[T], int], capacity: int) -> list[list[T]]:
    bins: list[list[T]] = []
    room: list[int] = []
    for i in sorted(range(len(fits)), key=lambda i: (-size(fits[i]), i)):
        n = size(fits[i])
        k = next((k for k, r in enumerate(room) if r >= n), None)
        if k is None:
            bins.append([fits[i]])
            room.append(capacity - n)
        else:
            bins[k].append(fits[i])
            room[k] -= n
    return bins


def pack_next_fit(lengths: list[int], capacity: int) -> tuple[list[Pack], list[int]]:
    """:func:`next_fit` over row indexes: (packs, rows too long to fit anywhere)."""
    skipped: list[int] = []
    packs = [close_pack(rows, [lengths[i] for i in rows], capacity)
             for rows in next_fit(range(len(lengths)), lengths.__getitem__, capacity, skipped)]
    return packs, skipped


def pack_first_fit_decreasing(lengths: list[int], capacity: int, buffer: int = 1000) -> tuple[list[Pack], list[int]]:
    """:func:`first_fit_decreasing` over row indexes: (packs, rows too long to fit anywhere)."""
    skipped: list[int] = []
    packs = [close_pack(rows, [lengths[i] for i in rows], capacity)
             for rows in first_fit_decreasing(range(len(lengths)), lengths.__getitem__, capacity, skipped, buffer)]
    return packs, skipped


def close_pack(rows: list, lengths: list[int], capacity: int) -> Pack:
    """A pack of ``rows`` (their ``lengths``, in order) with its boundaries, padding to ``capacity``."""
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    if cu[-1] < capacity:
        cu.append(capacity)  # the padding after the last sequence
    return Pack(list(rows), cu)


def pack_weights(labels: list[list[int]], pack: Pack, capacity: int, dtype=np.float32) -> np.ndarray:
    """[L]: 1 / N_i on the target positions of sequence i, 0 elsewhere (spec 3.4); float32 as stored."""
    w = np.zeros(capacity, dtype=dtype)
    at = 0
    for i in pack.rows:
        lab = np.asarray(labels[i])
        n = int((lab != -100).sum())
        if n:
            w[at:at + len(lab)][lab != -100] = 1.0 / n
        at += len(lab)
    return w


def group_sequence_counts(n_seqs_with_targets: list[int], k: int) -> list[int]:
    """M of each group of ``k`` consecutive packs (the last group may be shorter)."""
    return [int(sum(n_seqs_with_targets[g:g + k])) for g in range(0, len(n_seqs_with_targets), k)]


def batch_order(n_rows: int, batch: int, seed: int) -> tuple[np.ndarray, int]:
    """Spec 3.5 on rows already in length order: the full batches (batch g holds rows g*B..(g+1)*B)
    in training order, shuffled with the seed, and the number of rows in full batches (the rest,
    the longest, are dropped)."""
    n_full = n_rows // batch * batch
    return np.random.default_rng(seed).permutation(n_full // batch), n_full


def sorted_batches(lengths: list[int], batch: int, seed: int) -> tuple[list[list[int]], list[int]]:
    """Spec 3.5: stable sort by length, groups of ``batch`` rows, the remainder dropped, group order
    shuffled with the seed. Returns (groups in training order, dropped rows)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    perm, n_full = batch_order(len(order), batch, seed)
    return [order[g * batch:(g + 1) * batch] for g in perm.tolist()], order[n_full:]
