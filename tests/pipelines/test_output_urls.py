"""URLs given as --input and --output (issue 32, points 4 and 6): ``file://`` names a local path,
the same run as the plain path; a store that ends with the process is refused as a command's output."""

from __future__ import annotations

import json

import duckdb

from tests.conftest import run_cli, write_jsonl, write_pipeline


def _setup(tmp_path):
    (tmp_path / "in").mkdir()
    src = write_jsonl(tmp_path / "in" / "docs.jsonl",
                      [{"id": f"d{k}", "text": f"document number {k} with some words"} for k in range(30)])
    pipe = write_pipeline(tmp_path / "p.yaml", """
        name: urls
        stages:
          - stage: normalize
        """)
    return src, pipe


def test_file_urls_are_the_local_paths_they_name(tmp_path):
    src, pipe = _setup(tmp_path)
    plain = run_cli("run", str(pipe), "--input", str(src), "--output", str(tmp_path / "plain"), "--catalog",
                    str(tmp_path / "c.duckdb"), "--quiet", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    url = run_cli("run", str(pipe), "--input", f"file://{src}", "--output", f"file://{tmp_path}/by%20url",
                  "--catalog", str(tmp_path / "c.duckdb"), "--quiet", cwd=tmp_path)
    assert url.returncode == 0, url.stderr
    prints = [json.loads((tmp_path / d / ".longforge" / "run.json").read_text())["fingerprint"]
              for d in ("plain", "by url")]
    assert prints[0] == prints[1]
    assert not (tmp_path / "file:").exists()  # not taken as a relative folder named 'file:'
    outputs = {p for (p,) in duckdb.connect(str(tmp_path / "c.duckdb"), read_only=True).execute(
        "SELECT output_path FROM runs").fetchall()}
    assert outputs == {str(tmp_path / "plain"), str(tmp_path / "by url")}


def test_a_file_url_output_inside_its_input_folder_is_refused(tmp_path):
    src, pipe = _setup(tmp_path)
    r = run_cli("run", str(pipe), "--input", f"file://{src.parent}", "--output", f"file://{src.parent}/out",
                "--catalog", str(tmp_path / "c.duckdb"), "--quiet", cwd=tmp_path)
    assert r.returncode == 2 and "--output" in r.stderr, r.stderr
    assert not (src.parent / "out").exists()


def test_a_file_url_of_another_host_is_refused(tmp_path):
    src, pipe = _setup(tmp_path)
    r = run_cli("run", str(pipe), "--input", f"file://elsewhere{src}", "--catalog", str(tmp_path / "c.duckdb"),
                "--quiet", cwd=tmp_path)
    assert r.returncode == 2 and "host 'elsewhere'" in r.stderr, r.stderr


def test_a_memory_store_is_refused_as_the_output_of_a_command(tmp_path):
    src, pipe = _setup(tmp_path)
    r = run_cli("run", str(pipe), "--input", str(src), "--output", "memory://lf/out", "--catalog",
                str(tmp_path / "c.duckdb"), "--quiet", cwd=tmp_path)
    assert r.returncode == 2 and "ends with this process" in r.stderr, r.stderr
    assert not (tmp_path / "c.duckdb").exists()  # refused before a run was recorded


def test_a_memory_store_inside_an_fsspec_chain_is_refused_too(tmp_path):
    src, pipe = _setup(tmp_path)
    for out in ("simplecache::memory://lf/out", "dir::memory://lf/out"):
        r = run_cli("run", str(pipe), "--input", str(src), "--output", out, "--catalog", str(tmp_path / "c.duckdb"),
                    "--quiet", cwd=tmp_path)
        assert r.returncode == 2 and "ends with this process" in r.stderr, (out, r.stderr)


def test_a_remote_input_beside_local_ones_keeps_the_local_overlap_check(tmp_path):
    from pipelines.engine.plan import output_overlaps_input
    from pipelines.spec import InputSpec

    out = tmp_path / "o"
    found = output_overlaps_input(str(out), [InputSpec(path="s3://b/x.jsonl"), InputSpec(path=str(out / "in.jsonl"))],
                                  [])
    assert found and "inside output" in found
    assert "inside input" in output_overlaps_input("s3a://b/in/sub", [InputSpec(path="s3://b/in/")], [])
    assert output_overlaps_input("s3://b/other", [InputSpec(path="s3://b/in/")], []) is None
