"""Dataflow readiness (issue 18, must show): every product pipeline's Beam jobs are built by
Dataflow's own runner with ``--dry_run`` (options checked, job made, nothing submitted: no Google
account or network here) and every stage of the pipeline is named in a job's graph, as a transform
that runs on Dataflow's workers. The workers get longforge as a wheel and a requirements file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipelines.engine.plan import build_plan
from pipelines.spec import load_pipeline
from tests.conftest import REPO, write_jsonl

PRODUCT_PIPELINES = sorted(p.name for p in (REPO / "pipelines").glob("*.yaml"))
DATAFLOW = ["--runner=DataflowRunner", "--project=demo-project", "--region=us-central1",
            "--temp_location=gs://demo-bucket/tmp"]


@pytest.fixture(scope="module")
def tiny_input(tmp_path_factory) -> Path:
    """Planning reads the input's files and sizes, not its records: a few lines stand in for a corpus."""
    return write_jsonl(tmp_path_factory.mktemp("df") / "docs.jsonl",
                       [{"id": f"d{i}", "text": "In the beginning was the word. " * 20} for i in range(5)])


@pytest.mark.parametrize("pipeline", PRODUCT_PIPELINES)
def test_dataflow_job_graph_names_every_stage(pipeline, tiny_input, tmp_path, capsys):
    from pipelines.commands.main import main

    args = ["run", str(REPO / "pipelines" / pipeline), "--input", str(tiny_input), "--output", str(tmp_path / "o"),
            "--runner", "beam", "--dry-run"] + [f"--beam-arg={a}" for a in DATAFLOW]
    assert main(args) == 0
    out = capsys.readouterr().out
    desc = json.loads(out[out.index("{"):])
    jobs = desc["beam_jobs"]
    assert not (tmp_path / "o").exists(), "a dry run writes nothing"
    on_dataflow = [j for j in jobs if j["runs_on"] == "Dataflow"]
    assert on_dataflow and on_dataflow[-1]["job"] == "publish"
    assert all(j["job_name"].startswith("longforge-") for j in on_dataflow)
    named = set()  # "Run step-03-... [apply dedup, tokenize, feed pack]": the stages a worker transform runs
    for t in (t for j in on_dataflow for t in j["transforms"] if t.startswith("Run ") and t.endswith("]")):
        named |= {re.sub(r"^(apply|feed) ", "", s) for s in t[t.index("[") + 1:-1].split(", ")}
    plan = build_plan(load_pipeline(str(REPO / "pipelines" / pipeline)), inputs=[str(tiny_input)],
                      output=str(tmp_path / "o"))
    for ps in plan.stages:
        assert ps.label in named, f"stage {ps.label} is in no Dataflow transform"
    options = desc["beam_worker_options"]
    wheel = next(o.split("=", 1)[1] for o in options if o.startswith("--extra_package="))
    requirements = Path(next(o.split("=", 1)[1] for o in options if o.startswith("--requirements_file=")))
    assert Path(wheel).name.startswith("longforge-") and Path(wheel).is_file()
    assert any(line.startswith("apache-beam") for line in requirements.read_text().splitlines())
