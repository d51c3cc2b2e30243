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
    from stages.longwriter.stages import LongBenchWriteScore

    path = Path(args.predictions).expanduser()
    if not path.is_file():
        print(f"error: predictions file '{path}' does not exist", file=sys.stderr)
        return 2
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        print(f"error: --output '{out}' is a file; give a new or empty folder", file=sys.stderr)
        return 2
    records, bad = [], []
    with open(path, "rb") as f:
        for k, raw_line in enumerate(f, start=1):
            try:
                line = raw_line.decode("utf-8-sig" if k == 1 else "utf-8")  # a byte-order mark is no part of it
                raw = json.loads(line) if line.strip() else None
            except ValueError as e:  # not UTF-8 (UnicodeDecodeError is a ValueError) or not JSON
                print(f"error: {path}:{k}: {'not UTF-8' if isinstance(e, UnicodeDecodeError) else 'not JSON'} "
                      f"({e}); fix or remove the line", file=sys.stderr)
                return 2
            if raw is None:
                continue
            if not isinstance(raw, dict):
                bad.append({"id": f"line-{k}", "reason": "not a JSON object",
                            "detail": f"{path.name}:{k} holds a {type(raw).__name__}"})
                continue
            rid = str(raw.get("id", f"{k - 1:05d}"))
            problem = _length_problem(raw.get("length")) if "length" in raw else None
            if problem:
                bad.append({"id": rid, "reason": "invalid length", "detail": problem})
                continue
            records.append({"id": rid, "metadata": json.dumps(raw, ensure_ascii=False)})
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
    from pipelines.storage.redaction import redact, redact_text

    rejected = [{**r, "detail": redact_text(str(r["detail"]))} for r in bad + rejected]  # no URL's key either
    summary = {**stage.summarize_metrics(sums), "rejected": len(rejected), "params": redact(params)}
    write_text_atomic("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows + rejected),
                      out / "scores.jsonl")
    write_text_atomic(json.dumps(summary, indent=2, sort_keys=True) + "\n", out / "summary.json")
    reasons: dict[str, int] = {}
    for r in rejected:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    for reason, n in sorted(reasons.items()):
        print(f"warning: {n} record(s) rejected: {reason} (each with its detail in {out / 'scores.jsonl'})",
              file=sys.stderr)
    shown = {k: summary[k] for k in ("samples", "judged", "S_l", "S_q", "S") if k in summary}
    print("  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()) + f" -> {out}")
    return 0


#: The longest output a LongBench-Write prompt may ask for, in words (the benchmark's reach 20,000).
MAX_REQUIRED_LENGTH = 10_000_000


def _length_problem(value) -> str | None:
    """Why a record's required ``length`` cannot be scored, or None: a whole number of words from 1."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"length {value!r} is not a number"
    if value != value or value in (float("inf"), float("-inf")):
        return f"length {value!r} is not finite"
    if not float(value).is_integer() or not 1 <= value <= MAX_REQUIRED_LENGTH:
        return f"length {value!r} is not a whole number from 1 to {MAX_REQUIRED_LENGTH:,}"
    return None
