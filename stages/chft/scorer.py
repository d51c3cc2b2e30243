"""Scoring a corrector's replies to ChFT records: CER before and after, punctuation and ITN
(:mod:`stages.chft.scoring`), reported per split."""

from __future__ import annotations

from stages import register_scorer
from stages.base import EvalScorer
from stages.chft import scoring
from stages.chft.stages import CHFT_RECORD


@register_scorer(CHFT_RECORD)
class ChftScorer(EvalScorer):
    def score(self, item: dict, reply: str, target: str = "text") -> dict[str, float]:
        return scoring.score_correction(item["hypothesis"], item["reference"], reply, target, item.get("pairs") or ())

    def group(self, item: dict) -> str:
        return f"{item['dataset']}/{item['split']}" if item.get("split") else super().group(item)

    def max_new_tokens(self, item: dict) -> int:
        """The transcript again, with room (a character can take two tokens)."""
        return min(2 * len(item["hypothesis"]) + 32, 4096)
