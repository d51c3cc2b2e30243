"""Scoring replies to Ada-LEval's sets: TSort (the order of the segments) and BestAnswer (the
accepted answer), each by the paper's strict parser and by the reference code's."""

from __future__ import annotations

import json

from stages import register_scorer
from stages.adaleval import core
from stages.adaleval.bestanswer import BESTANSWER_ITEM
from stages.adaleval.tsort import TSORT_ITEM
from stages.base import EvalScorer


@register_scorer(TSORT_ITEM)
class TSortScorer(EvalScorer):
    max_tokens = 32

    def score(self, item: dict, reply: str, target: str = "text") -> dict[str, float]:
        answer = list(item.get("answer") or json.loads(item["answers"][0]))
        n = len(answer)
        return {"strict": float(core.tsort_correct_strict(answer, core.parse_tsort_strict(reply, n))),
                "reference": float(core.tsort_correct_reference(answer, core.parse_tsort_reference(reply, n)))}


@register_scorer(BESTANSWER_ITEM)
class BestAnswerScorer(EvalScorer):
    max_tokens = 16

    def score(self, item: dict, reply: str, target: str = "text") -> dict[str, float]:
        n = len(item.get("all_classes") or [])
        gold = item["answers"][0]
        return {"strict": float(core.parse_best_answer_strict(reply, n) == gold),
                "reference": float(core.parse_best_answer_reference(reply, n) == gold)}
