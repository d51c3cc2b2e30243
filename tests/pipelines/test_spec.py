"""Pipeline files fail before any work, naming file, line, key and fix (issue: four broken files)."""

from __future__ import annotations

import pytest

from pipelines.spec import PipelineError, load_pipeline
from tests.conftest import REPO, run_cli, write_pipeline

HEADER = """
name: broken
inputs:
  - path: nowhere.jsonl
stages:
"""

BROKEN = {
    # name: (stages block, line of the mistake, text the message must contain)
    "misspelled_stage": ("  - stage: normalise\n", 5, "did you mean 'normalize'"),
    "misspelled_param": ("  - stage: normalize\n    params:\n      frm: NFC\n", 7, "did you mean 'form'"),
    "wrong_type": ("  - stage: length_filter\n    params:\n      min_chars: lots\n", 7, "valid integer"),
    "schemas_do_not_connect": (
        "  - stage: normalize\n  - stage: token_filter\n    params: {max_tokens: 100}\n",
        6,
        "add a 'tokenize' stage before it",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_validate_rejects_broken_pipeline_with_file_line_and_fix(tmp_path, case):
    stages, line, expected = BROKEN[case]
    path = write_pipeline(tmp_path / f"{case}.yaml", HEADER + stages)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli("validate", str(path), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"{path}:{line}:" in result.stderr
    assert expected in result.stderr
    # Nothing written: no catalog, no output folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_four_broken_pipelines_give_four_distinct_messages(tmp_path):
    messages = set()
    for case, (stages, _line, _expected) in BROKEN.items():
        path = write_pipeline(tmp_path / f"{case}.yaml", HEADER + stages)
        with pytest.raises(PipelineError) as e:
            from pipelines.engine.plan import resolve_stages

            resolve_stages(load_pipeline(path))
        messages.add(str(e.value).split(":", 2)[2])  # drop file and line
    assert len(messages) == 4


def test_run_of_broken_pipeline_fails_before_work(tmp_path):
    path = write_pipeline(tmp_path / "p.yaml", HEADER + BROKEN["schemas_do_not_connect"][0])
    result = run_cli("run", str(path), "--output", str(tmp_path / "out"), "--catalog",
                     str(tmp_path / "c.duckdb"), cwd=tmp_path)
    assert result.returncode == 2
    assert not (tmp_path / "out").exists() and not (tmp_path / "c.duckdb").exists()


def test_unknown_top_level_key_and_missing_name(tmp_path):
    path = write_pipeline(tmp_path / "p.yaml", "name: x\nstagse: []\n")
    with pytest.raises(PipelineError, match=r"p.yaml:2: stagse: unknown key -> did you mean 'stages'"):
        load_pipeline(path)
    path = write_pipeline(tmp_path / "q.yaml", "stages:\n  - stage: normalize\n")
    with pytest.raises(PipelineError, match="name: required key is missing"):
        load_pipeline(path)


def test_pipeline_file_cannot_execute_code(tmp_path):
    path = write_pipeline(tmp_path / "p.yaml", "name: !!python/object/apply:os.system ['touch pwned']\n"
                                               "stages:\n  - stage: normalize\n")
    with pytest.raises(PipelineError, match="invalid YAML"):
        load_pipeline(path)
    assert not (tmp_path / "pwned").exists()


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write_pipeline(tmp_path / "p.yaml", "name: x\nstages:\n  - stage: normalize\n   params: {\n")
    with pytest.raises(PipelineError) as e:
        load_pipeline(path)
    assert e.value.line is not None and e.value.line >= 3


@pytest.mark.parametrize("name", ["documents.yaml"])
def test_bundled_pipelines_validate(name):
    result = run_cli("validate", str(REPO / "pipelines" / name))
    assert result.returncode == 0, result.stderr
    assert "tokenize" in result.stdout


def test_dry_run_prints_plan_without_writing(tmp_path, corpora_dir):
    result = run_cli("run", str(REPO / "pipelines" / "documents.yaml"), "--input", str(corpora_dir / "paul_graham"),
                     "--output", str(tmp_path / "out"), "--catalog", str(tmp_path / "c.duckdb"), "--dry-run")
    assert result.returncode == 0, result.stderr
    import json

    plan = json.loads(result.stdout)
    assert [s["stage"] for s in plan["stages"]][:2] == ["normalize", "length_filter"]
    assert plan["shards"] and plan["stages"][-1]["writes"].startswith("document+")
    assert not (tmp_path / "out").exists() and not (tmp_path / "c.duckdb").exists()


@pytest.mark.parametrize("stages, line, needs", [
    ("  - stage: icp_embed\n  - stage: icp_order\n  - stage: icp_knn\n", 6, "add a 'icp_knn' stage before it"),
    ("  - stage: icp_embed\n  - stage: icp_pack\n", 6, "'pos'"),
    ("  - stage: icp_knn\n", 5, "'emb'"),
])
def test_the_planner_checks_the_order_of_the_icp_stages(tmp_path, stages, line, needs):
    """Each ICP stage declares what it reads (vectors, neighbours, positions): out of order, the
    pipeline fails before any work, naming the line."""
    from pipelines.engine.plan import resolve_stages

    path = write_pipeline(tmp_path / "icp.yaml", HEADER + stages)
    with pytest.raises(PipelineError) as e:
        resolve_stages(load_pipeline(path))
    assert f"{path}:{line}:" in str(e.value) and needs in str(e.value)


@pytest.mark.parametrize("name", ["../../../x", "/abs/x", "a/b", "..", ".hidden", "a\nconfigs:\n- config_name: x",
                                  "a b", "x" * 101, "é", "a`b", "a|b"])
def test_a_pipeline_name_or_label_that_is_not_a_plain_name_is_refused_before_any_work(tmp_path, name):
    """Issue 32, points 6 and 12: the name becomes out/<name> and the card's YAML header."""
    import json

    path = write_pipeline(tmp_path / "p.yaml", f"name: {json.dumps(name)}\nstages:\n  - stage: normalize\n")
    with pytest.raises(PipelineError, match=r"p.yaml:1: name: .*not a plain name"):
        load_pipeline(path)
    path = write_pipeline(tmp_path / "q.yaml",
                          f"name: ok\nstages:\n  - stage: normalize\n    label: {json.dumps(name)}\n")
    with pytest.raises(PipelineError, match=r"q.yaml:4: stages\[0\]\.label: .*not a plain name"):
        load_pipeline(path)
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "text": "x"}\n')
    r = run_cli("run", str(tmp_path / "p.yaml"), "--input", str(src), "--catalog", str(tmp_path / "c.duckdb"),
                cwd=tmp_path)
    assert r.returncode == 2 and "not a plain name" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "p.yaml", "q.yaml"]


@pytest.mark.parametrize("name", ["icp", "gateau-smollm2", "v1.2_run", "A9"])
def test_plain_names_are_accepted(tmp_path, name):
    path = write_pipeline(tmp_path / "p.yaml", f"name: {name}\nstages:\n  - stage: normalize\n    label: {name}\n")
    assert load_pipeline(path).spec.name == name
