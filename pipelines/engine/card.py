"""The dataset card (``README.md`` in the Hub's layout, so the folder can be pushed as it stands)
and ``.longforge/run.json``, the record a later run and ``longforge push`` read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from pipelines.engine import markdown
from pipelines.engine.progress import format_table
from pipelines.engine.steps import Plan
from pipelines.storage.redaction import redact
from schemas.files import write_text_atomic


def summary_table(stats: list[dict]) -> str:
    rows = [(s["step"], s["stage"], s["in"], s["out"], s["rejected"], s["dropped"], s["seconds"]) for s in stats]
    return format_table(["step", "stage", "in", "out", "rejected", "dropped", "seconds"], rows)


def write_card(plan: Plan, run_id: str, runner: str, n: int, fingerprint: str, stats: list[dict],
                seconds: float, metrics: dict | None = None) -> None:
    """A dataset card in the Hub's layout, so the folder can be pushed as it stands."""
    schema = plan.final_schema
    fields = "\n".join(f"| {markdown.code(f.name)} | {markdown.code(f.type)} |" for f in schema.fields)
    stages = "\n".join(f"{i + 1}. {markdown.code(s.name)} "
                       f"{markdown.code(json.dumps(redact(s.stage.params.model_dump()), sort_keys=True))}"
                       for i, s in enumerate(plan.stages))
    header = yaml.safe_dump({"configs": [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/train-*.parquet"}]}], "tags": ["longforge", plan.spec.name]},
        sort_keys=False).strip()  # a name such as 1.5 or null stays a string
    description = markdown.prose(plan.spec.description.strip() or "Built with longforge.")
    accounting = "\n".join(markdown.fenced(summary_table(stats)))
    load = f"ds = datasets.load_dataset({markdown.python_string(os.path.abspath(plan.output_dir))}, split=\"train\")"
    card = f"""---
{header}
---

# {plan.spec.name}

{description}

- records: {n:,}
- schema: `{schema.ref}`
- content fingerprint: `{fingerprint}`
- pipeline spec fingerprint: `{plan.fingerprint}`
- seed: {plan.spec.seed}
- built by run `{run_id}` on the `{runner}` runner in {seconds:.1f} s

## Fields

| field | type |
|---|---|
{fields}

## Stages

{stages}

## Record accounting

{accounting}

Rejected and dropped records, with reasons, are in `.longforge/rejects.parquet` and in the catalog.
{_metrics_section(metrics)}
```python
import datasets
{load}
```
"""
    write_text_atomic(card, Path(plan.output_dir) / "README.md")
    write_text_atomic(
        json.dumps({"run_id": run_id, "pipeline": plan.spec.name, "records": n, "fingerprint": fingerprint,
                    "spec_fingerprint": plan.fingerprint, "schema": schema.ref, "stats": stats}, indent=2),
        Path(plan.output_dir) / ".longforge" / "run.json",
    )


def _metrics_section(metrics: dict | None) -> str:
    if not metrics:
        return ""
    lines = ["", "## Quality metrics", "", "| stage | metric | value |", "|---|---|---|"]
    for stage, values in metrics.items():
        lines += [f"| {markdown.cell(stage)} | {markdown.cell(k)} | {v:.4f} |" if isinstance(v, float)
                  else f"| {markdown.cell(stage)} | {markdown.cell(k)} | {markdown.cell(v)} |"
                  for k, v in sorted(values.items())]
    return "\n".join(lines) + "\n"
