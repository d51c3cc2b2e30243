"""What an input is before it is read (issue 32, point 5): a pipe, a FIFO or a device is refused
before any work (a FIFO would block, /dev/zero never ends), an empty or blank JSONL file is refused as
the README says, a FIFO inside an input folder is named in a note, and a UTF-8 byte-order mark is not
taken for part of the first record."""

from __future__ import annotations

import os
import subprocess

import pyarrow.parquet as pq
import pytest

from tests.conftest import LONGFORGE, REPO, run_cli, write_pipeline

PIPE = """
name: kinds
stages:
  - stage: normalize
"""


def _run(tmp_path, inp: str, *extra: str, **kw):
    pipe = write_pipeline(tmp_path / "p.yaml", PIPE)
    return run_cli("run", str(pipe), "--input", inp, "--output", str(tmp_path / "out"), "--catalog",
                   str(tmp_path / "c.duckdb"), *extra, **kw)


def test_a_byte_order_mark_is_not_part_of_the_first_record(tmp_path):
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"id": "a", "text": "first"}\n{"id": "b", "text": "second"}\n')
    r = _run(tmp_path, str(tmp_path / "bom.jsonl"), "--quiet")
    assert r.returncode == 0, r.stderr
    assert sorted(pq.read_table(str(tmp_path / "out" / "data")).column("id").to_pylist()) == ["a", "b"]
    assert "0 rejected" in r.stdout


@pytest.mark.parametrize("content", [b"", b"\n  \n\t\n"])
def test_an_empty_or_blank_jsonl_file_is_refused(tmp_path, content):
    (tmp_path / "e.jsonl").write_bytes(content)
    r = _run(tmp_path, str(tmp_path / "e.jsonl"), "--quiet")
    assert r.returncode == 2 and "is empty" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "c.duckdb").exists()


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_a_device_is_refused_before_it_is_read(tmp_path, device):
    r = _run(tmp_path, device, "--quiet", timeout=60)
    assert r.returncode == 2 and "is a device, not a file" in r.stderr, r.stderr


def test_a_pipe_from_the_shell_is_refused_with_the_fix(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"id": "a", "text": "x"}\n')
    pipe = write_pipeline(tmp_path / "p.yaml", PIPE)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # /dev/stdin fed by a pipe, as `cat d.jsonl | longforge run p.yaml --input /dev/stdin` gives it
    cat = subprocess.Popen(["cat", str(tmp_path / "d.jsonl")], stdout=subprocess.PIPE)
    r = subprocess.run([*LONGFORGE, "run", str(pipe), "--input", "/dev/stdin", "--output", str(tmp_path / "out"),
                        "--catalog", str(tmp_path / "c.duckdb"), "--quiet"], stdin=cat.stdout, env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    cat.wait()
    assert r.returncode == 2 and "not a file" in r.stderr and "save it to a file first" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_a_fifo_is_refused_not_waited_on_and_one_in_a_folder_is_named(tmp_path):
    os.mkfifo(tmp_path / "f.jsonl")
    r = _run(tmp_path, str(tmp_path / "f.jsonl"), "--quiet", timeout=60)  # it used to block forever
    assert r.returncode == 2 and "is a pipe or FIFO" in r.stderr, r.stderr
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"id": "a", "text": "x"}\n')
    os.mkfifo(folder / "b.jsonl")
    r = _run(tmp_path, str(folder), timeout=60)
    assert r.returncode == 0, r.stderr
    assert "not files and were not read" in r.stderr and "b.jsonl (a pipe or FIFO" in r.stderr
