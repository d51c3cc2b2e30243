"""Scoring a ChFT corrector (spec ../shared/specs/chft.md 5): CER before and after the correction,
with and without punctuation, punctuation precision / recall / F1 and ITN accuracy from a character
alignment; a JSON reply's pairs applied to the hypothesis."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from stages.chft.core import Pair, canonical, cer, is_punct


def without_punct(text: str) -> str:
    return "".join(c for c in text if not is_punct(c))


def parse_predicted_pairs(reply: str) -> list[dict] | None:
    """A JSON list of ``{"wrong", "right", "hyp_start"}`` from a model's reply (a fenced block is
    unwrapped); None when the reply is not such a list."""
    text = reply.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    if fenced:
        text = fenced.group(1).strip()
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, list) or not all(isinstance(x, dict) and isinstance(x.get("wrong"), str)
                                             and isinstance(x.get("right"), str) for x in data):
        return None
    return data


def apply_predicted_pairs(hypothesis: str, predicted: list[dict]) -> str:
    """The hypothesis with each predicted pair applied where it is found: at its ``hyp_start`` when
    the text there is its ``wrong`` span, else at the first occurrence; a pair found nowhere, or
    overlapping one already placed, is left out (a model's slip costs that pair, not the rest)."""
    placed: list[tuple[int, int, str]] = []
    for x in predicted:
        wrong, start = x["wrong"], x.get("hyp_start")
        if not wrong:
            continue
        if not (isinstance(start, int) and hypothesis[start:start + len(wrong)] == wrong):
            start = hypothesis.find(wrong)
        if start < 0 or any(start < e and s < start + len(wrong) for s, e, _ in placed):
            continue
        placed.append((start, start + len(wrong), x["right"]))
    out = hypothesis
    for s, e, right in sorted(placed, reverse=True):
        out = out[:s] + right + out[e:]
    return out


def score_correction(hypothesis: str, reference: str, reply: str, target: str = "text",
                     pairs: Sequence[Pair | dict] = ()) -> dict[str, float]:
    """Spec 5: CER before and after a model's correction, also with punctuation removed (a, b); the
    punctuation counts that P/R/F1 add up over items (c); and of the item's ``itn`` pairs, how many
    the correction writes as the reference does (d). ``target`` json: the reply's pairs applied to
    the hypothesis, an invalid reply being no correction."""
    if target == "json":
        predicted = parse_predicted_pairs(reply)
        corrected = apply_predicted_pairs(hypothesis, predicted) if predicted is not None else hypothesis
        valid = float(predicted is not None)
    else:
        corrected, valid = reply, 1.0
    itn = [x for x in (q if isinstance(q, dict) else q.as_dict() for q in pairs) if x["type"] == "itn"]
    at = _matched(reference, canonical(corrected)) if itn else []  # one alignment for all the pairs
    itn_right = sum(1 for x in itn if _restored(at, x["ref_start"], x["ref_end"]))
    # all three canonical: a segment may begin with the space a reply would not repeat
    hypothesis, reference, corrected = canonical(hypothesis), canonical(reference), canonical(corrected)
    tp, made, gold = punctuation_counts(corrected, reference)
    return {"cer_before": cer(hypothesis, reference), "cer_after": cer(corrected, reference),
            "cer_before_nopunct": cer(without_punct(hypothesis), without_punct(reference)),
            "cer_after_nopunct": cer(without_punct(corrected), without_punct(reference)), "json_valid": valid,
            "punct_correct": tp, "punct_made": made, "punct_gold": gold, "itn_right": itn_right,
            "itn_pairs": len(itn)}


def _matched(reference: str, output: str) -> list[int | None]:
    """For each character of ``reference``, the character of ``output`` the character alignment
    (Levenshtein, rapidfuzz) matches it to, or None where it is substituted or deleted."""
    from rapidfuzz.distance import Levenshtein

    at: list[int | None] = [None] * len(reference)
    for op in Levenshtein.opcodes(reference, output):
        if op.tag == "equal":
            for k in range(op.src_end - op.src_start):
                at[op.src_start + k] = op.dest_start + k
    return at


def _is_mark(ch: str) -> bool:
    return not ch.isspace() and is_punct(ch)


def punctuation_counts(output: str, reference: str) -> tuple[int, int, int]:
    """(correct, made, gold) punctuation marks (spec 5c): a reference mark is correct when the
    alignment matches it to the same mark in the output; made = the output's marks."""
    at = _matched(reference, output)
    gold = [i for i, ch in enumerate(reference) if _is_mark(ch)]
    return sum(1 for i in gold if at[i] is not None), sum(1 for ch in output if _is_mark(ch)), len(gold)


def _restored(at: list[int | None], start: int, end: int) -> bool:
    """Whether the output writes ``reference[start:end]`` as the reference does (spec 5d): every
    character of the span matched, in one run, by the alignment ``at`` (:func:`_matched`)."""
    part = at[start:end]
    return bool(part) and all(x is not None for x in part) and part[-1] - part[0] == end - start - 1
