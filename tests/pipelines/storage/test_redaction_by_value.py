"""Credentials are hidden by their value and shape wherever they flow (issue 32, point 10): a URL's
user:password in an input (catalog, report), in an S3 URL that botocore quotes without its scheme,
in LongBench-Write's --base-url (summary.json, scores.jsonl), and option names that are not on any
list (--hftoken, --accesstoken, --passphrase, --private_key, an Azure connection string)."""

from __future__ import annotations

import functools
import http.server
import threading

import duckdb
import pytest

from tests.conftest import run_cli, write_jsonl, write_pipeline

PIPE = """
name: redact
stages:
  - stage: normalize
"""


@pytest.fixture
def served(tmp_path):
    """A local HTTP server over tmp_path (it ignores the credentials; the URL still carries them)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()


def test_a_urls_password_reaches_neither_the_catalog_nor_the_report(tmp_path, served):
    write_jsonl(tmp_path / "in.jsonl", [{"id": f"d{k}", "text": f"text {k}"} for k in range(5)])
    pipe = write_pipeline(tmp_path / "p.yaml", PIPE)
    url = f"http://someone:PASSWORD42xyz@127.0.0.1:{served}/in.jsonl"
    r = run_cli("run", str(pipe), "--input", url, "--output", str(tmp_path / "out"), "--catalog",
                str(tmp_path / "c.duckdb"), "--quiet")
    assert r.returncode == 0, r.stderr
    report = run_cli("report", "latest", "--catalog", str(tmp_path / "c.duckdb"), "--output", str(tmp_path / "r.html"))
    assert report.returncode == 0, report.stderr
    con = duckdb.connect(str(tmp_path / "c.duckdb"), read_only=True)
    paths = [p for (p,) in con.execute("SELECT path FROM artifacts").fetchall()]
    assert f"http://***@127.0.0.1:{served}/in.jsonl" in paths
    for where in (r.stdout + r.stderr + report.stderr, (tmp_path / "r.html").read_text(),
                  (tmp_path / "c.duckdb").read_bytes().decode("latin-1"), (tmp_path / "out" / "README.md").read_text()):
        assert "PASSWORD42xyz" not in where


def test_an_s3_secret_quoted_by_botocore_without_its_scheme_is_hidden(tmp_path):
    pipe = write_pipeline(tmp_path / "p.yaml", PIPE)
    r = run_cli("run", str(pipe), "--input", "s3://AKIAEXAMPLE:SECRETVALUE123abc@no_such_bucket/x.jsonl", "--output",
                str(tmp_path / "out"), "--catalog", str(tmp_path / "c.duckdb"), "--quiet")
    assert r.returncode != 0
    assert "SECRETVALUE123abc" not in r.stdout + r.stderr


def test_secret_options_outside_any_list_are_hidden_in_the_dry_run(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "x"}])
    pipe = write_pipeline(tmp_path / "p.yaml", PIPE)
    secrets = {"--hftoken": "HFVALUE1234567", "--accesstoken": "ACCESS1234567", "--passphrase": "PASS1234567",
               "--private_key": "PRIVATE1234567"}
    args = [f"--beam-arg={k}={v}" for k, v in secrets.items()]
    args.append("--beam-arg=--azure_connection_string=DefaultEndpointsProtocol=https;AccountName=a;"
                "AccountKey=AZUREKEY1234567;")
    r = run_cli("run", str(pipe), "--input", str(tmp_path / "in.jsonl"), "--runner", "beam", "--dry-run", *args)
    assert r.returncode == 0, r.stderr
    for value in [*secrets.values(), "AZUREKEY1234567"]:
        assert value not in r.stdout + r.stderr, value
    assert "--hftoken=***" in r.stdout


def test_longbench_write_base_url_credentials_stay_out_of_its_files(tmp_path):
    preds = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "Write 20 words.", "response": "x y z",
                                               "length": 20}])
    r = run_cli("longbench-write", str(preds), "--output", str(tmp_path / "out"), "--backend", "openai",
                "--base-url", "http://judge:JUDGEKEY98765@127.0.0.1:9/v1", "--judge-asks", "1")
    everything = r.stdout + r.stderr + "".join(p.read_text() for p in (tmp_path / "out").glob("*") if p.is_file())
    assert "JUDGEKEY98765" not in everything


def test_short_or_ordinary_option_values_are_not_taken_for_secrets(tmp_path):
    """Review finding: --token-budget 1 made every '1' on stderr '***'."""
    r = run_cli("score", "perplexity", "--input", str(tmp_path / "nope10.jsonl"), "--model", "smollm2-135m",
                "--token-budget", "1", "--catalog", str(tmp_path / "c.duckdb"))
    assert r.returncode == 2 and "nope10.jsonl" in r.stderr, r.stderr


def test_the_local_card_holds_no_credentials_of_a_stage_parameter_and_keeps_a_numeric_name_a_string(tmp_path):
    import yaml

    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "x", "prompt": "Write 10 words.",
                                               "response": "one two", "length": 10}])
    pipe = write_pipeline(tmp_path / "p.yaml", """
        name: "1.5"
        stages:
          - stage: longbench_write_score
            params: {backend: openai, model: m, base_url: "http://judge:CARDKEY98765@127.0.0.1:9/v1", retries: 0}
        """)
    r = run_cli("run", str(pipe), "--input", str(src), "--output", str(tmp_path / "out"), "--catalog",
                str(tmp_path / "c.duckdb"), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "CARDKEY98765" not in card + r.stdout + r.stderr
    header = yaml.safe_load(card.split("---")[1])
    assert header["tags"] == ["longforge", "1.5"]


def test_beam_and_its_workers_never_echo_a_secret_option(tmp_path):
    """Beam warns about options it does not know, value and all ('Unparseable argument: --hftoken=...'),
    in the driver and in its worker processes."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"d{k}", "text": f"text {k}"} for k in range(20)])
    pipe = write_pipeline(tmp_path / "p.yaml", PIPE)
    r = run_cli("run", str(pipe), "--input", str(src), "--output", str(tmp_path / "out"), "--runner", "beam",
                "--workers", "2", "--beam-arg=--hftoken=BEAMSECRET12345", "--catalog", str(tmp_path / "c.duckdb"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "BEAMSECRET12345" not in r.stdout + r.stderr + (tmp_path / "c.duckdb").read_bytes().decode("latin-1")
