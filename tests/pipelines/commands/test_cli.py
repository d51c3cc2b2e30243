"""The CLI contract: help generated from the parameter models, exit codes 0 / 2 / 1."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli, write_pipeline


def test_stages_lists_every_stage_with_parameters_and_schemas():
    r = run_cli("stages")
    assert r.returncode == 0
    for name in ("normalize", "language_id", "tokenize", "exact_dedup", "minhash_dedup", "sentence_split"):
        assert f"\n{name}  [" in "\n" + r.stdout
    assert "threshold: float = 0.0" in r.stdout  # from MinhashDedupParams
    assert "+ n_tokens" in r.stdout  # tokenize adds a field


def test_stages_one_and_unknown():
    r = run_cli("stages", "tokenize")
    assert r.returncode == 0 and "tokenizer: str = 'smollm2'" in r.stdout
    r = run_cli("stages", "tokenise")
    assert r.returncode == 2 and "did you mean 'tokenize'" in r.stderr


def test_corpus_list_and_unknown():
    r = run_cli("corpus", "list")
    assert r.returncode == 0 and "kjv_chapters" in r.stdout and "peoples_daily_1998" in r.stdout
    r = run_cli("corpus", "build", "kjv_chapter")
    assert r.returncode == 2 and "did you mean 'kjv_chapters'" in r.stderr


def test_usage_error_exit_2_and_run_failure_exit_1(tmp_path):
    assert run_cli("run").returncode == 2
    assert run_cli("frobnicate").returncode == 2
    # A tokenizer that does not exist is refused before any work (2); one that cannot be loaded fails the
    # run while working (1), which says why and is recorded 'failed'.
    (tmp_path / "d.jsonl").write_text('{"id": "a", "text": "hello"}\n')
    (tmp_path / "broken-tokenizer.json").write_text('{"not": "a tokenizer"}')
    for tokenizer, code, said in ((tmp_path / "no-such-tokenizer", 2, "never downloads models"),  # validation
                                  (tmp_path / "broken-tokenizer.json", 1, "run failed")):  # the run's setup
        p = write_pipeline(tmp_path / "p.yaml", f"""
            name: fails
            inputs: [{{path: {tmp_path / 'd.jsonl'}}}]
            stages:
              - stage: tokenize
                params: {{tokenizer: {tokenizer}}}
            """)
        r = run_cli("run", str(p), "--output", str(tmp_path / "out"), "--catalog", str(tmp_path / "c.duckdb"),
                    "--quiet")
        assert r.returncode == code and said in r.stderr, (tokenizer, r.stderr[-2000:])
    status = run_cli("catalog", "--catalog", str(tmp_path / "c.duckdb"), "query",
                     "SELECT status, error FROM runs", "--format", "csv")
    # the refused one never started a run; the failed one is recorded with its reason
    assert status.stdout.split("\n", 1)[1].startswith("failed,") and "expected" in status.stdout


def test_missing_input_is_exit_2(tmp_path):
    p = write_pipeline(tmp_path / "p.yaml", "name: x\ninputs: [{path: /no/such/file.jsonl}]\n"
                                            "stages:\n  - stage: normalize\n")
    r = run_cli("run", str(p), "--output", str(tmp_path / "o"), "--catalog", str(tmp_path / "c.duckdb"))
    assert r.returncode == 2 and "matches no files" in r.stderr and "p.yaml:2" in r.stderr


def test_secrets_in_beam_args_never_reach_the_catalog(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"id": "a", "text": "hello there"}\n')
    p = write_pipeline(tmp_path / "p.yaml", f"""
        name: secret
        inputs: [{{path: {tmp_path / 'd.jsonl'}}}]
        runner:
          beam_args: ["--hf_token=hf_SECRETVALUE", "--project=mine"]
        stages:
          - stage: normalize
        """)
    r = run_cli("run", str(p), "--output", str(tmp_path / "out"), "--catalog", str(tmp_path / "c.duckdb"), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "hf_SECRETVALUE" not in r.stdout + r.stderr
    dump = run_cli("catalog", "query", "SELECT * FROM runs", "--format", "json",
                   "--catalog", str(tmp_path / "c.duckdb"))
    assert dump.returncode == 0 and "--project=mine" in dump.stdout
    assert "hf_SECRETVALUE" not in dump.stdout and "--hf_token=***" in dump.stdout
    dry = run_cli("run", str(p), "--dry-run")
    assert dry.returncode == 0 and "hf_SECRETVALUE" not in dry.stdout


def test_longbench_write_length_scores_from_the_command_line(tmp_path):
    """`longforge longbench-write --length-only` on a predictions file: S_l per sample and the mean."""
    import json

    from stages.longwriter.core import length_score

    preds = tmp_path / "pred.jsonl"
    preds.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"prompt": "Write a 20 words note.", "response": " ".join(["river"] * 30), "length": 20},
        {"prompt": "写一篇10字的短文", "response": "河流从山中流出汇入大海", "length": 10}]) + "\n")
    r = run_cli("longbench-write", str(preds), "--output", str(tmp_path / "out"), "--length-only")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["S_l"] == pytest.approx((length_score(20, 30) + length_score(10, 11)) / 2)
    r = run_cli("longbench-write", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o2"))
    assert r.returncode == 2 and "does not exist" in r.stderr
