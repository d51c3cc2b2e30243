"""Everyday mistakes never lose or destroy data, never leak a credential, never spin forever, and
never leave a run 'running' (issue 11). Each test reproduces the mistake as a user makes it, on the
command line, and checks that nothing was lost and that the message names the fix."""

from __future__ import annotations

import gzip
import json
import os
import resource
import subprocess

import duckdb
import pyarrow.parquet as pq
import pytest

from tests.conftest import LONGFORGE, REPO, run_cli, write_jsonl, write_pipeline
from tests.pipelines.safety_helpers import PIPELINE, _catalog_rows, _digest_tree, _output_rows, _run

# -- 1. the same input twice, links, copies of one record ---------------------------------------------------


def test_the_same_input_twice_is_refused_before_any_work(docs, pipeline, tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", docs)
    r = _run(pipeline, tmp_path, "--input", str(src), "--input", str(src), "--output", str(tmp_path / "out"))
    assert r.returncode == 2
    assert "already read by inputs[0]" in r.stderr and "give each file once" in r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "c.duckdb").exists()
    # A link to the same file under another name is the same file.
    os.symlink(src, tmp_path / "b.jsonl")
    r = _run(pipeline, tmp_path, "--input", str(src), "--input", str(tmp_path / "b.jsonl"), "--output",
             str(tmp_path / "out"))
    assert r.returncode == 2 and "already read" in r.stderr


def test_a_folder_linking_to_itself_is_read_once_and_says_so(docs, pipeline, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    write_jsonl(folder / "a.jsonl", docs[:30])
    write_jsonl(folder / "sub" / "b.jsonl", docs[30:])
    os.symlink("..", folder / "sub" / "loop")  # a link back to the folder: a walk that follows it never ends
    os.symlink("a.jsonl", folder / "same.jsonl")  # the same file under a second name
    r = _run(pipeline, tmp_path, "--input", str(folder), "--output", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "each file is read once" in r.stderr
    rows = _output_rows(tmp_path / "out")
    assert sorted(x["id"] for x in rows) == sorted(d["id"] for d in docs)
    assert _catalog_rows(tmp_path, "SELECT records_in FROM stage_stats WHERE stage = 'read'") == [(60,)]


@pytest.mark.parametrize("runner", ["local", "beam", "datatrove"])
def test_copies_of_a_record_keep_exactly_one(docs, pipeline, tmp_path, runner):
    """Two files with the same records (a download kept twice): exact_dedup keeps one copy of each,
    never zero, and every runner writes the same bytes."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", docs)
    write_jsonl(folder / "copy-of-a.jsonl", docs)
    r = _run(pipeline, tmp_path, "--input", str(folder), "--output", str(tmp_path / runner), "--runner", runner,
             "--workers", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = _output_rows(tmp_path / runner)
    assert sorted(x["id"] for x in rows) == sorted(d["id"] for d in docs)  # 120 in, 60 out, none lost
    dropped = _catalog_rows(tmp_path, "SELECT reason, count(*) FROM rejects GROUP BY ALL")
    assert dropped == [("duplicate record", 60)]
    reference = tmp_path / "reference"
    if runner != "local":
        assert _run(pipeline, tmp_path, "--input", str(folder), "--output", str(reference)).returncode == 0
        assert _digest_tree(reference / "data") == _digest_tree(tmp_path / runner / "data")


# -- 2. outputs over data ---------------------------------------------------------------------------------


def test_output_over_a_dataset_that_longforge_did_not_write_is_refused(docs, pipeline, tmp_path):
    theirs = tmp_path / "their-dataset"
    (theirs / "data").mkdir(parents=True)
    pq.write_table(_table(docs), theirs / "data" / "train-00000-of-00001.parquet")
    (theirs / "README.md").write_text("my card")
    before = _digest_tree(theirs)
    src = write_jsonl(tmp_path / "a.jsonl", docs[:10])
    r = _run(pipeline, tmp_path, "--input", str(src), "--output", str(theirs))
    assert r.returncode == 2
    assert "longforge did not write" in r.stderr and "new or empty folder" in r.stderr
    assert _digest_tree(theirs) == before


def _table(rows):
    import pyarrow as pa

    return pa.Table.from_pylist(rows)


def test_output_equal_to_or_inside_an_input_folder_is_refused(docs, pipeline, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", docs)
    before = _digest_tree(folder)
    for output in (folder, folder / "out"):
        r = _run(pipeline, tmp_path, "--input", str(folder), "--output", str(output))
        assert r.returncode == 2, r.stderr
        assert "inside input" in r.stderr and "folder of its own" in r.stderr
    assert _digest_tree(folder) == before
    # An input inside the output folder would be overwritten or read back.
    r = _run(pipeline, tmp_path, "--input", str(folder / "a.jsonl"), "--output", str(tmp_path))
    assert r.returncode == 2 and "inside output" in r.stderr


def test_replacing_a_finished_dataset_of_another_spec_needs_overwrite(docs, pipeline, tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", docs)
    out = tmp_path / "out"
    assert _run(pipeline, tmp_path, "--input", str(src), "--output", str(out)).returncode == 0
    first = _digest_tree(out / "data")
    assert _run(pipeline, tmp_path, "--input", str(src), "--output", str(out)).returncode == 0  # same spec: fine
    other = write_pipeline(tmp_path / "q.yaml", PIPELINE.replace("exact_dedup", "length_filter\n    params: "
                                                                 "{min_chars: 3000}"))
    r = _run(other, tmp_path, "--input", str(src), "--output", str(out))
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert _digest_tree(out / "data") == first
    r = _run(other, tmp_path, "--input", str(src), "--output", str(out), "--overwrite")
    assert r.returncode == 0, r.stderr
    assert all(len(x["text"]) >= 3000 for x in _output_rows(out))


# -- 3. mixed folders ------------------------------------------------------------------------------------------


def test_a_folder_of_parquet_and_jsonl_is_refused_not_half_read(docs, pipeline, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(_table(docs[:30]), folder / "part-a.parquet")
    write_jsonl(folder / "part-b.jsonl", docs[30:])
    r = _run(pipeline, tmp_path, "--input", str(folder), "--output", str(tmp_path / "out"))
    assert r.returncode == 2
    assert "both Parquet (1 files) and JSONL (1 files)" in r.stderr and "**/*.jsonl" in r.stderr
    # As two inputs, every record is read.
    r = _run(pipeline, tmp_path, "--input", f"{folder}/**/*.parquet", "--input", f"{folder}/**/*.jsonl",
             "--output", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert len(_output_rows(tmp_path / "out")) == 60


def test_files_of_another_kind_in_a_folder_are_named_not_skipped_silently(docs, pipeline, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", docs)
    (folder / "notes.csv").write_text("id,text\n1,x\n")
    r = _run(pipeline, tmp_path, "--input", str(folder), "--output", str(tmp_path / "out"))
    assert r.returncode == 0 and "1 other file(s) not read: notes.csv" in r.stderr
    r = run_cli("run", str(pipeline), "--input", str(folder), "--dry-run")
    assert "notes.csv" in json.dumps(json.loads(r.stdout)["notes"])


# -- 7, 8. expansions and loops bounded by the input -------------------------------------------------------------


def _limited(limit_bytes: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    return apply


def test_a_yaml_alias_bomb_is_refused_in_bounded_memory(tmp_path):
    lines = ["name: bomb", 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    lines.append("stages: [{stage: normalize}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert bomb.stat().st_size < 1024
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for command in ("validate", "run"):
        r = subprocess.run([*LONGFORGE, command, str(bomb)], env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=120, preexec_fn=_limited(3 << 30))  # 3 GiB: the bomb would need tens
        assert r.returncode == 2, r.stderr[-2000:]
        assert "expand to more than 100,000 values" in r.stderr
    recursive = write_pipeline(tmp_path / "rec.yaml", "name: x\nr: &r [1, *r]\nstages: [{stage: normalize}]\n")
    r = run_cli("validate", str(recursive))
    assert r.returncode == 2 and "refers to a value that contains it" in r.stderr


def test_a_tiny_shard_size_is_refused_not_turned_into_a_million_files(docs, tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", docs)
    p = write_pipeline(tmp_path / "p.yaml", PIPELINE + "read:\n  shard_mb: 0.000001\n")
    r = _run(p, tmp_path, "--input", str(src), "--output", str(tmp_path / "out"))
    assert r.returncode == 2 and "read.shard_mb" in r.stderr and "greater than or equal to 0.01" in r.stderr
    assert not (tmp_path / "out").exists()


# -- 9. secrets -------------------------------------------------------------------------------------------------

SECRET = "hf_SecretTokenValue1234567890abcd"
PLAIN = "plainpassword42"  # a secret of no recognisable shape: only its option tells


def test_credentials_never_reach_the_screen_the_dry_run_or_the_catalog(docs, tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", docs[:5])
    p = write_pipeline(tmp_path / "p.yaml", PIPELINE + f"""
runner:
  beam_args: ["--hf_token={SECRET}", "--temp_location=https://user:{SECRET}@example.invalid/tmp"]
""")
    split = ["--beam-arg=--hf_token", f"--beam-arg={PLAIN}", f"--beam-arg=--api_key={SECRET}"]
    dry = run_cli("run", str(p), "--input", str(src), "--runner", "beam", *split, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert SECRET not in dry.stdout + dry.stderr and PLAIN not in dry.stdout + dry.stderr
    assert '"***"' in dry.stdout
    r = run_cli("run", str(p), "--input", str(src), "--runner", "beam", *split, "--output", str(tmp_path / "out"),
                "--catalog", str(tmp_path / "c.duckdb"))  # not quiet: progress lines and Beam's warnings too
    assert r.returncode == 0, r.stderr[-3000:]
    assert SECRET not in r.stdout + r.stderr and PLAIN not in r.stdout + r.stderr
    assert "Unparseable argument: ***" in r.stderr  # Beam did warn, with the value hidden
    stored = _catalog_rows(tmp_path, "SELECT params::VARCHAR FROM runs")[0][0]
    assert SECRET not in stored and PLAIN not in stored and "user:" not in stored and "--hf_token=***" in stored
    for f in (tmp_path / "out").rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes() and PLAIN.encode() not in f.read_bytes(), f


# -- 11. clear messages instead of tracebacks ---------------------------------------------------------------------


def test_damaged_parquet_inputs_are_named_before_any_work(docs, pipeline, tmp_path):
    good = tmp_path / "good.parquet"
    pq.write_table(_table(docs), good)
    data = good.read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.parquet").write_bytes(b"")
    for name in ("cut.parquet", "empty.parquet"):
        r = _run(pipeline, tmp_path, "--input", str(tmp_path / name), "--output", str(tmp_path / "out"))
        assert r.returncode == 2, r.stderr
        assert f"{name}' is not a readable Parquet file" in r.stderr and "re-export it" in r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_truncated_jsonl_gz_keeps_what_it_can_and_rejects_the_rest_with_a_reason(docs, pipeline, tmp_path):
    blob = gzip.compress("".join(json.dumps(d) + "\n" for d in docs).encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(blob[: len(blob) * 2 // 3])
    r = _run(pipeline, tmp_path, "--input", str(tmp_path / "cut.jsonl.gz"), "--output", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    kept = {x["id"] for x in _output_rows(tmp_path / "out")}
    assert 0 < len(kept) < 60 and kept == {d["id"] for d in docs[:len(kept)]}  # a prefix, each whole
    rejects = _catalog_rows(tmp_path, "SELECT stage, reason, detail FROM rejects")
    assert len(rejects) == 1 and rejects[0][:2] == ("read", "truncated or corrupt file")


@pytest.mark.parametrize("args, message", [
    (["--workers", "-3"], "--workers: must be at least 1"),
    (["--seed", "-1"], "--seed: must be between 0 and 2**63 - 1"),
    (["--seed", "1e23"], "--seed: expected a whole number"),
])
def test_bad_numbers_on_the_command_line_are_refused(pipeline, tmp_path, args, message):
    r = run_cli("run", str(pipeline), "--input", "x.jsonl", *args)
    assert r.returncode == 2 and message in r.stderr


def test_bad_numbers_and_duplicate_keys_in_the_pipeline_file_are_refused(tmp_path):
    seed = write_pipeline(tmp_path / "s.yaml", "name: x\nseed: 1.0e+23\nstages: [{stage: normalize}]\n")
    r = run_cli("validate", str(seed))
    assert r.returncode == 2 and "s.yaml:2: seed" in r.stderr
    dup = write_pipeline(tmp_path / "d.yaml", "name: x\nstages: [{stage: normalize}]\nname: y\n")
    r = run_cli("validate", str(dup))
    assert r.returncode == 2
    assert "d.yaml:3: name: key 'name' appears twice in one mapping (first on line 1)" in r.stderr
    assert "keep one of the two" in r.stderr


# -- 6. the catalog query reads and nothing else ------------------------------------------------------------


def test_catalog_query_reads_its_artifacts_and_nothing_else(docs, pipeline, tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", docs)
    out = tmp_path / "out"
    assert _run(pipeline, tmp_path, "--input", str(src), "--output", str(out)).returncode == 0
    data = next((out / "data").glob("*.parquet"))
    before = _digest_tree(out)
    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE runs AS SELECT 1 AS x")
    con.close()
    secret_file = tmp_path / "private.txt"
    secret_file.write_text("not for the catalog")
    cat = ["catalog", "--catalog", str(tmp_path / "c.duckdb"), "query"]
    refused = {
        f"COPY (SELECT 1 AS x) TO '{data}' (FORMAT parquet)": "COPY",
        f"ATTACH '{other}' AS o (READ_WRITE)": "ATTACH",
        "SELECT 1; DELETE FROM runs": "SELECT, DELETE",
        "INSTALL httpfs": "LOAD",
        "SET enable_external_access = true": "SET",
    }
    for sql, kind in refused.items():
        r = run_cli(*cat, sql)
        assert r.returncode == 2, (sql, r.stdout, r.stderr)
        assert f"got {kind}" in r.stderr and "--format csv or json" in r.stderr
    r = run_cli(*cat, f"SELECT content FROM read_text('{secret_file}')")
    assert r.returncode == 2 and "disabled by configuration" in r.stderr and "not for the catalog" not in r.stdout
    assert _digest_tree(out) == before
    assert duckdb.connect(str(other), read_only=True).execute("SELECT count(*) FROM runs").fetchone() == (1,)
    # What the catalog is for still works: a join of its rows with an artifact's records.
    r = run_cli(*cat, f"SELECT count(*) AS n FROM read_parquet('{out}/data/*.parquet') d "
                "JOIN rejects r ON r.record_id = d.id", "--format", "csv")
    assert r.returncode == 0, r.stderr
    r = run_cli(*cat, "SELECT status FROM runs", "--format", "csv")
    assert r.stdout.split() == ["status", "succeeded"]


def test_corpus_build_and_select_never_write_over_someone_elses_folder(tmp_path):
    theirs = tmp_path / "theirs"
    (theirs / "data").mkdir(parents=True)
    (theirs / "data" / "train-00000-of-00001.parquet").write_bytes(b"their bytes")
    before = _digest_tree(theirs)
    r = run_cli("corpus", "build", "paul_graham", "--output", str(theirs))
    assert r.returncode != 0 and "new or empty folder" in r.stderr
    r = run_cli("select", str(tmp_path / "no-gateau-run"), "--output", str(theirs))
    assert r.returncode == 2 and "new or empty folder" in r.stderr
    assert _digest_tree(theirs) == before
    # The corpus's own folder is rebuilt in place, as `make corpora` does.
    mine = tmp_path / "pg"
    assert run_cli("corpus", "build", "paul_graham", "--output", str(mine)).returncode == 0
    assert run_cli("corpus", "build", "paul_graham", "--output", str(mine)).returncode == 0
