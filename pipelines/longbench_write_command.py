"""``longforge longbench-write PREDICTIONS --output DIR``: LongBench-Write scores of a predictions
file (LongWriter's ``pred.py`` lines: prompt, response, length; or ``messages`` with a ``length``),
through the ``longbench_write_score`` stage: S_l, the judge's six ratings, S_q and S. The judge's
replies go to a generation cache in DIR, so a rerun asks it nothing twice."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def longbench_write(args) -> int:
    from schemas.files import write_text_atomic
    from stages.base import Services
    from stages.longwriter import LongBenchWriteScore

    path = Path(args.predictions).expanduser()
    if not path.is_file():
        print(f"error: predictions file '{path}' does not exist", file=sys.stderr)
        return 2
    records = []
    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except ValueError as e:
            print(f"error: {path}:{k + 1}: not JSON ({e}); fix or remove the line", file=sys.stderr)
            return 2
        records.append({"id": str(raw.get("id", f"{k:05d}")), "metadata": json.dumps(raw, ensure_ascii=False)})
    out = Path(args.output)
    if out.exists() and any(out.iterdir()) and not (out / "summary.json").exists():
        print(f"error: --output '{out}' already holds files that are not a LongBench-Write scoring; give a new or "
              "empty folder", file=sys.stderr)
        return 2
    params = {"model": args.judge_model, "backend": args.backend, "length_only": args.length_only,
              "judge_asks": args.judge_asks}
    if args.base_url:
        params["base_url"] = args.base_url
    stage = LongBenchWriteScore(LongBenchWriteScore.Params(**params))
    stage.services = Services(generation_cache=out / ".generations")
    stage.setup()
    rows, rejected, sums = [], [], {}
    for r in records:
        for o in stage.process(r):
            if isinstance(o, dict):
                rows.append({"id": o["id"], "required_length": o["required_length"],
                             "response_length": o["response_length"], "score_length": o["score_length"],
                             "ratings": json.loads(o["ratings"])})
            elif hasattr(o, "values"):
                for name, v in o.values.items():
                    sums[name] = sums.get(name, 0) + v
            else:
                rejected.append({"id": o.record_id, "reason": o.reason, "detail": o.detail})
    from pipelines.redaction import redact, redact_text

    rejected = [{**r, "detail": redact_text(str(r["detail"]))} for r in rejected]  # a URL's key is no detail
    summary = {**stage.summarize_metrics(sums), "rejected": len(rejected), "params": redact(params)}
    write_text_atomic("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows + rejected),
                      out / "scores.jsonl")
    write_text_atomic(json.dumps(summary, indent=2, sort_keys=True) + "\n", out / "summary.json")
    shown = {k: summary[k] for k in ("samples", "judged", "S_l", "S_q", "S") if k in summary}
    print("  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()) + f" -> {out}")
    return 0
