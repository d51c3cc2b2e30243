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

    def summarize(self, group: str, values: dict[str, list[float]]) -> dict[str, float]:
        """Spec 5: mean CER in %, its relative reduction, punctuation P/R/F1 and ITN accuracy."""
        metrics = super().summarize(group, values)
        if "cer_after" not in values:
            return metrics
        for name in ("cer_before", "cer_after", "cer_before_nopunct", "cer_after_nopunct", "json_valid"):
            metrics[f"{name}:{group}"] = 100 * sum(values[name]) / len(values[name])
        metrics |= self.micro_prf("punct_", group,
                                  *(sum(values[k]) for k in ("punct_correct", "punct_made", "punct_gold")))
        itn = sum(values["itn_pairs"])
        metrics[f"itn_pairs:{group}"] = itn
        if itn:  # spec 5d: of the itn pairs, the share the correction writes as the reference
            metrics[f"itn_accuracy:{group}"] = 100 * sum(values["itn_right"]) / itn
        before = metrics[f"cer_before:{group}"]
        metrics[f"cer_reduction:{group}"] = 100 * (before - metrics[f"cer_after:{group}"]) / before if before \
            else 0.0
        return metrics

    def describe(self, group: str, metrics: dict[str, float]) -> str:
        line = super().describe(group, metrics)
        if f"cer_after:{group}" in metrics:
            line += (f"CER {metrics[f'cer_before:{group}']:.2f}% -> {metrics[f'cer_after:{group}']:.2f}% "
                     f"(reduction {metrics[f'cer_reduction:{group}']:.1f}%)")
        return line

