"""``longforge eval score PREDICTIONS --set BUILT_SET``: score a predictions file (JSONL: ``id`` and
``answer``, the model's raw reply) against a built evaluation set (a pipeline's output folder or a
Parquet file of its records), with both parsers of each task: ``strict`` (ours: the first bounded
label, a whole permutation) and ``reference`` (the published evaluators, quirks included, for
comparison with published numbers). Per-item scores go to the catalog's ``scores`` table and the
accuracies per dataset and parser to its ``metrics``, under a run of pipeline ``eval:score``."""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path

SCORERS = ("strict", "reference")


class EvalInputError(ValueError):
    """A predictions file or a set that cannot be scored; the message says which line and how to fix it."""


def read_set(path: str) -> dict[str, dict]:
    import pyarrow.parquet as pq

    p = Path(path).expanduser()
    target = p / "data" if (p / "data").is_dir() else p
    if not target.exists():
        raise EvalInputError(f"--set '{path}': no such folder or file (give a pipeline's output folder or a Parquet "
                             "file of its records)")
    table = pq.read_table(str(target))
    missing = {"id", "dataset", "answers"} - set(table.column_names)
    if missing:
        raise EvalInputError(f"--set '{path}': not an evaluation set (no {', '.join(sorted(missing))} column)")
    rows = table.to_pylist()
    return {r["id"]: r for r in rows}


def read_predictions(path: str) -> dict[str, str]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise EvalInputError(f"predictions file '{path}' does not exist")
    out: dict[str, str] = {}
    for k, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except ValueError as e:
            raise EvalInputError(f"{path}:{k}: not JSON ({e}); fix or remove the line") from None
        answer = next((raw[key] for key in ("answer", "prediction", "pred", "response") if key in raw), None)
        if "id" not in raw or not isinstance(answer, str):
            raise EvalInputError(f"{path}:{k}: needs an 'id' and the reply as a string in 'answer'")
        if str(raw["id"]) in out:
            raise EvalInputError(f"{path}:{k}: id {raw['id']!r} again; one prediction per item")
        out[str(raw["id"])] = answer
    return out


def score_item(item: dict, reply: str) -> dict[str, float]:
    """1.0 or 0.0 per parser for one item, by the task its ``dataset`` names."""
    from stages import adaleval_core as core

    dataset = item["dataset"]
    if dataset.startswith("tsort"):
        answer = list(item.get("answer") or json.loads(item["answers"][0]))
        n = len(answer)
        return {"strict": float(core.tsort_correct_strict(answer, core.parse_tsort_strict(reply, n))),
                "reference": float(core.tsort_correct_reference(answer, core.parse_tsort_reference(reply, n)))}
    if dataset.startswith("bestanswer"):
        n = len(item.get("all_classes") or [])
        gold = item["answers"][0]
        return {"strict": float(core.parse_best_answer_strict(reply, n) == gold),
                "reference": float(core.parse_best_answer_reference(reply, n) == gold)}
    raise EvalInputError(f"item {item['id']!r}: dataset {dataset!r} has no scorer here (tsort_*, bestanswer_*)")


def eval_score(args) -> int:
    import pyarrow as pa

    from catalog import Catalog
    from pipelines.run import new_run_id

    try:
        items = read_set(args.set)
        preds = read_predictions(args.predictions)
        unknown = sorted(set(preds) - set(items))
        if unknown:
            raise EvalInputError(f"{len(unknown)} predictions name no item of the set, e.g. {unknown[:3]}: "
                                 "are they for another set?")
        scored = {rid: score_item(items[rid], reply) for rid, reply in sorted(preds.items())}
    except EvalInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sums: dict[tuple[str, str], list[float]] = defaultdict(list)
    for rid, s in scored.items():
        for parser, v in s.items():
            sums[(items[rid]["dataset"], parser)].append(v)
    metrics = {f"accuracy:{ds}:{parser}": 100 * sum(v) / len(v) for (ds, parser), v in sorted(sums.items())}
    per_set = defaultdict(int)
    for it in items.values():
        per_set[it["dataset"]] += 1
    metrics |= {f"items:{ds}": n for ds, n in per_set.items()}
    metrics |= {f"predicted:{ds}": len(sums[(ds, "strict")]) for ds in per_set}
    catalog = Catalog(args.catalog)
    run_id = new_run_id()
    settings = {"set": os.path.abspath(args.set), "predictions": os.path.abspath(args.predictions),
                "model": args.model}
    catalog.start_run(run_id, pipeline="eval:score", pipeline_file="", runner="eval", workers=1,
                      spec_fingerprint="", seed=0, params=settings, code_version="",
                      output_path=os.path.abspath(args.set))
    try:
        rows = [(rid, f"{items[rid]['dataset']}:{parser}", v) for rid, s in scored.items() for parser, v in s.items()]
        catalog.add_scores(pa.table({
            "sample_id": [r[0] for r in rows], "job": ["eval"] * len(rows), "model": [args.model] * len(rows),
            "metric": [r[1] for r in rows], "value": [r[2] for r in rows], "run_id": [run_id] * len(rows),
            "settings": [json.dumps(settings, sort_keys=True)] * len(rows)}))
        catalog.record_results(run_id, stage_stats=[], rejects=None, artifacts=[], lineage=[],
                               metrics={"eval": metrics})
    except BaseException as e:
        catalog.finish_run(run_id, "failed", f"{type(e).__name__}: {e}"[:2000])
        raise
    catalog.finish_run(run_id, "succeeded")
    width = max(len(ds) for ds in per_set)
    for ds in sorted(per_set):
        got = len(sums[(ds, "strict")])
        line = "  ".join(f"{parser} {metrics[f'accuracy:{ds}:{parser}']:5.1f}%" for parser in SCORERS
                         if f"accuracy:{ds}:{parser}" in metrics)
        print(f"{ds:<{width}}  {got}/{per_set[ds]} predicted  {line or 'no prediction'}")
    print(f"catalog: {catalog.path} (run {run_id}: table scores, job = 'eval'; table metrics, stage = 'eval')")
    return 0
