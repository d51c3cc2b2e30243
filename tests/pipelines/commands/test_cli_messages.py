"""Hostile command lines end in a message, never a traceback (issue 32, point 14): each case is
a command a careless user types; the answer names what is wrong, with exit code 1 or 2."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli, write_jsonl


def _cases(tmp_path) -> dict[str, tuple[list[str], str]]:
    (tmp_path / "empty.duckdb").write_bytes(b"")
    (tmp_path / "corrupt.duckdb").write_bytes(b"not a database" * 100)
    (tmp_path / "bad-utf8.jsonl").write_bytes(b'{"id": "a", "answer": "\xff\xfe"}\n')
    (tmp_path / "str.jsonl").write_text('"str"\n')
    (tmp_path / "int.jsonl").write_text("123\n")
    (tmp_path / "a-file").write_text("x")
    folder = tmp_path / "not-gateau"
    folder.mkdir()
    (folder / "README.md").write_text("hello")
    preds = {"negative": write_jsonl(tmp_path / "negative.jsonl",
                                     [{"id": "a", "prompt": "p", "response": "r", "length": -5}])}
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a"], "dataset": ["tsort"], "answers": [["[1, 2, 3, 4]"]]}),
                   tmp_path / "set.parquet")
    (tmp_path / "Posts.xml").write_text('<?xml version="1.0"?>\n<posts><row Id="1" PostTypeId="1" Body="x"')
    (tmp_path / "bomb.xml").write_text('<?xml version="1.0"?>\n<!DOCTYPE p [<!ENTITY a "aaaaaaaaaa">'
                                      + "".join(f'<!ENTITY {chr(98 + k)} "' + f"&{chr(97 + k)};" * 10 + '">'
                                                for k in range(8))
                                      + ']>\n<posts><row Id="1" PostTypeId="1" Body="&i;"/></posts>')
    (tmp_path / "bad.csv").write_text('text,category\n"unterminated,card_arrival\nok,x\n')
    pipe = tmp_path / "p.yaml"
    pipe.write_text("name: p\nstages:\n  - stage: normalize\n")
    c = str(tmp_path / "c.duckdb")
    return {
        "report on a missing catalog": (["report", "latest", "--catalog", c], "no catalog"),
        "report on an empty catalog": (["report", "latest", "--catalog", str(tmp_path / "empty.duckdb")],
                                       "cannot be opened"),
        "report on a corrupt catalog": (["report", "latest", "--catalog", str(tmp_path / "corrupt.duckdb")],
                                        "cannot be opened"),
        "push with a missing catalog": (["push", "latest", "--repo", "lab/x", "--catalog", c], "no catalog"),
        "push to lab/..": (["push", "latest", "--repo", "lab/..", "--catalog", c], "not a Hub repo id"),
        "push to lab/a--b": (["push", "latest", "--repo", "lab/a--b", "--catalog", c], "not a Hub repo id"),
        "push to lab/-x": (["push", "latest", "--repo", "lab/-x", "--catalog", c], "not a Hub repo id"),
        "push to lab/é": (["push", "latest", "--repo", "lab/é", "--catalog", c], "not a Hub repo id"),
        "longbench-write --output a file": (["longbench-write", str(preds["negative"]), "--output",
                                             str(tmp_path / "a-file"), "--length-only"], "a-file"),
        "select on a folder that is not a GATEAU output": (["select", str(folder), "--output", str(tmp_path / "o6")],
                                                           "not-gateau"),
        "eval score on invalid UTF-8": (["eval", "score", str(tmp_path / "bad-utf8.jsonl"), "--set",
                                         str(tmp_path / "set.parquet"), "--catalog", c], "not UTF-8"),
        "eval score on a line that is a string": (["eval", "score", str(tmp_path / "str.jsonl"), "--set",
                                                   str(tmp_path / "set.parquet"), "--catalog", c], "a str, not an"),
        "eval score on a line that is a number": (["eval", "score", str(tmp_path / "int.jsonl"), "--set",
                                                   str(tmp_path / "set.parquet"), "--catalog", c], "a int, not an"),
        "eval score with a JSONL as the set": (["eval", "score", str(tmp_path / "str.jsonl"), "--set",
                                                str(tmp_path / "str.jsonl"), "--catalog", c], "not a Parquet file"),
        "eval score with a folder of a README as the set": (["eval", "score", str(tmp_path / "str.jsonl"), "--set",
                                                             str(folder), "--catalog", c], "holds no Parquet files"),
        "score --device tpu:7": (["score", "perplexity", "--input", str(tmp_path / "str.jsonl"), "--model",
                                  "smollm2-135m", "--device", "tpu:7", "--catalog", c], "is not a device"),
        "an unreachable http input, even with --dry-run": (["run", str(pipe), "--input", "http://127.0.0.1:9/x.jsonl",
                                                            "--dry-run"], "cannot list the remote input"),
        "an S3 input without credentials": (["run", str(pipe), "--input", "s3://no-such-bucket-lf/x.jsonl",
                                             "--dry-run"], "cannot list the remote input"),
        "eval import a Posts.xml cut short": (["eval", "import", "stackexchange", str(tmp_path / "Posts.xml"),
                                               "--output", str(tmp_path / "posts.jsonl")], "nothing was written"),
        "eval import a Posts.xml of entities": (["eval", "import", "stackexchange", str(tmp_path / "bomb.xml"),
                                                 "--output", str(tmp_path / "posts2.jsonl")], "nothing was written"),
        "eval predict --output a Parquet file": (["eval", "predict", "--set", str(tmp_path / "set.parquet"),
                                                  "--output", str(tmp_path / "set.parquet")], "--output"),
        "eval predict --limit -3": (["eval", "predict", "--set", str(tmp_path / "set.parquet"), "--limit", "-3",
                                     "--output", str(tmp_path / "p.jsonl")], "--limit"),
        "select --output a file": (["select", str(folder), "--output", str(tmp_path / "a-file")], "is a file"),
        "eval import a CSV with an open quote": (["eval", "import", "banking77", str(tmp_path / "bad.csv"),
                                                  "--output", str(tmp_path / "b77.jsonl")], "unterminated quote"),
        "validate a folder": (["validate", str(folder)], "a folder"),
        "run a folder": (["run", str(folder)], "a folder"),
    }


CASES = ["report on a missing catalog", "report on an empty catalog", "report on a corrupt catalog",
         "push with a missing catalog", "push to lab/..", "push to lab/a--b", "push to lab/-x", "push to lab/é",
         "longbench-write --output a file", "select on a folder that is not a GATEAU output", "validate a folder",
         "run a folder", "eval score on invalid UTF-8", "eval score on a line that is a string",
         "eval score on a line that is a number", "eval score with a JSONL as the set",
         "eval score with a folder of a README as the set", "score --device tpu:7",
         "an unreachable http input, even with --dry-run", "an S3 input without credentials",
         "eval import a Posts.xml cut short", "eval import a Posts.xml of entities",
         "eval predict --output a Parquet file", "eval predict --limit -3", "select --output a file",
         "eval import a CSV with an open quote"]


@pytest.mark.parametrize("case", ["nan", "negative", "inf", "huge", "list"])
def test_a_prediction_with_an_unusable_length_is_rejected_with_its_reason(tmp_path, case):
    """Bad records go to the rejects with a reason; the good ones are scored; the command says so."""
    bad = {"nan": {"length": float("nan")}, "negative": {"length": -5}, "inf": {"length": float("inf")},
           "huge": {"length": 1e308}, "list": None}[case]
    good = {"id": "good", "prompt": "Write 5 words.", "response": "one two three four five", "length": 5}
    with open(tmp_path / "p.jsonl", "w") as f:
        f.write(json.dumps(good) + "\n")
        f.write((json.dumps([1, 2]) if bad is None else json.dumps({"id": "bad", "prompt": "p", "response": "r",
                                                                    **bad})) + "\n")
    r = run_cli("longbench-write", str(tmp_path / "p.jsonl"), "--output", str(tmp_path / "out"), "--length-only")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "1 record(s) rejected" in r.stderr
    rows = [json.loads(x) for x in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]
    assert [x["id"] for x in rows if "score_length" in x] == ["good"]
    assert [x["reason"] for x in rows if "reason" in x] == ["not a JSON object" if bad is None else "invalid length"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["rejected"] == 1


@pytest.mark.parametrize("case", CASES)
def test_a_hostile_command_line_ends_in_a_message(tmp_path, case):
    args, said = _cases(tmp_path)[case]
    r = run_cli(*args, timeout=120)
    assert r.returncode in (1, 2), (case, r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and said in r.stderr, (case, r.stderr[-2000:])
    assert "not a failure longforge foresaw" not in r.stderr, (case, r.stderr[-2000:])
    assert not list(tmp_path.glob("*.partial")), case  # nothing half-written left behind


def test_a_byte_order_mark_does_not_spoil_the_first_prediction(tmp_path):
    """Review finding: the BOM fix reached `run` only; eval and longbench-write read predictions too."""
    line = json.dumps({"id": "a", "prompt": "Write 5 words.", "response": "one two three four five", "length": 5})
    (tmp_path / "p.jsonl").write_bytes(b"\xef\xbb\xbf" + line.encode() + b"\n")
    r = run_cli("longbench-write", str(tmp_path / "p.jsonl"), "--output", str(tmp_path / "out"), "--length-only")
    assert r.returncode == 0 and "rejected" not in r.stderr, r.stderr[-2000:]


def test_an_s3_endpoint_that_is_down_is_named_with_the_fix(tmp_path):
    pipe = tmp_path / "p.yaml"
    pipe.write_text("name: p\nstages:\n  - stage: normalize\n")
    r = run_cli("run", str(pipe), "--input", "s3://bucket/x.jsonl", "--dry-run", timeout=120,
                env={"AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKE", "AWS_SECRET_ACCESS_KEY": "fake-secret-value-123",
                     "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert r.returncode == 2 and "cannot list the remote input" in r.stderr and "Traceback" not in r.stderr
    assert "fake-secret-value-123" not in r.stderr
