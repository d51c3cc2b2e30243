"""Scoring replies to LIConBench items: exact match per item, and the counts micro-F1 adds up."""

from __future__ import annotations

from stages import register_scorer
from stages.base import EvalScorer
from stages.licon import core
from stages.licon.stages import LICON_ITEM


@register_scorer(LICON_ITEM)
class LiconScorer(EvalScorer):
    max_tokens = 32

    def score(self, item: dict, reply: str, target: str = "text") -> dict[str, float]:
        tally = core.score_reply(item.get("task") or "classification", reply, item["answers"],
                                 item.get("all_classes") or [])
        exact = tally.correct == tally.gold == tally.made
        return {"strict": float(exact), "correct": tally.correct, "made": tally.made, "gold": tally.gold}

    def summarize(self, group: str, values: dict[str, list[float]]) -> dict[str, float]:
        """Accuracy, and micro precision/recall/F1 over the items' counts (spec 6)."""
        metrics = super().summarize(group, values)
        if "gold" in values:
            metrics |= self.micro_prf("", group, *(sum(values[k]) for k in ("correct", "made", "gold")))
        return metrics

    def describe(self, group: str, metrics: dict[str, float]) -> str:
        line = super().describe(group, metrics)
        if f"micro_f1:{group}" in metrics:
            line += f"  micro-F1 {metrics[f'micro_f1:{group}']:5.1f}%"
        return line

