"""Which environment variable a pipeline file may send to a generation server as its API key (issue
32, point 9): OPENAI_API_KEY, LONGFORGE_<NAME>_API_KEY, or one named with `--api-key-env`; never a
Hugging Face token, known by its name or by its value."""

from __future__ import annotations

import http.server
import threading

import pytest

from gpu_jobs.generate import GenerationError, OpenAIGenerator
from tests.conftest import run_cli, write_jsonl, write_pipeline

PIPE = """
name: judge
stages:
  - stage: longbench_write_score
    params: {{backend: openai, model: m, base_url: "http://127.0.0.1:{port}/v1", api_key_env: {env}}}
"""


PREDICTION = {"id": "a", "text": "x", "prompt": "Write 10 words.", "response": "x", "length": 10}


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):  # noqa: N802 - the handler's name
        _Recorder.seen.append(self.headers.get("Authorization"))
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Recorder.seen = []
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield httpd.server_address[1]
    httpd.shutdown()


@pytest.mark.parametrize("env", ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "HOME"])
def test_a_pipeline_file_cannot_send_any_variable_to_any_host(tmp_path, server, env):
    pipe = write_pipeline(tmp_path / "p.yaml", PIPE.format(port=server, env=env))
    src = write_jsonl(tmp_path / "in.jsonl", [PREDICTION])
    secret = {env: "hf_" + "S" * 30 if "TOKEN" in env else "s3cr3t-value"}
    for args in (["validate", str(pipe)],
                 ["run", str(pipe), "--input", str(src), "--output", str(tmp_path / "out"), "--catalog",
                  str(tmp_path / "c.duckdb"), "--quiet"]):
        r = run_cli(*args, env=secret)
        assert r.returncode == 2, (args, r.stderr)
        assert "may not be sent to a generation server" in r.stderr and secret[env] not in r.stderr + r.stdout
    assert _Recorder.seen == []
    if "TOKEN" in env:  # not even when named on the command line
        r = run_cli("run", str(pipe), "--input", str(src), "--output", str(tmp_path / "out"), "--catalog",
                    str(tmp_path / "c.duckdb"), "--api-key-env", env, "--quiet", env=secret)
        assert r.returncode == 2 and "never sent" in r.stderr and _Recorder.seen == []


def test_a_variable_named_on_the_command_line_is_sent(tmp_path, server):
    pipe = write_pipeline(tmp_path / "p.yaml", PIPE.format(port=server, env="MY_SERVER_KEY"))
    src = write_jsonl(tmp_path / "in.jsonl", [PREDICTION])
    r = run_cli("run", str(pipe), "--input", str(src), "--output", str(tmp_path / "out"), "--catalog",
                str(tmp_path / "c.duckdb"), "--api-key-env", "MY_SERVER_KEY", "--quiet",
                env={"MY_SERVER_KEY": "key-for-this-server"})
    assert "may not be sent" not in r.stderr, r.stderr
    assert "Bearer key-for-this-server" in _Recorder.seen  # the server (answering 500) was asked


def test_an_allowed_variable_holding_a_hub_token_is_not_sent(monkeypatch, server):
    monkeypatch.setenv("HF_TOKEN", "a-hub-token-without-the-usual-prefix")
    monkeypatch.setenv("OPENAI_API_KEY", "a-hub-token-without-the-usual-prefix")
    with pytest.raises(GenerationError, match="is a Hugging Face token"):
        OpenAIGenerator("m", f"http://127.0.0.1:{server}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "hf_" + "x" * 34)  # the Hub's shape, whatever the variable
    with pytest.raises(GenerationError, match="is a Hugging Face token"):
        OpenAIGenerator("m", f"http://127.0.0.1:{server}/v1")
    assert _Recorder.seen == []


def test_a_urls_user_and_password_go_as_basic_auth_and_nowhere_else(monkeypatch, server):
    import base64

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    gen = OpenAIGenerator("m", f"http://judge:pa%40ss@127.0.0.1:{server}/v1", retries=0)
    assert gen.base_url == f"http://127.0.0.1:{server}/v1"
    with pytest.raises(GenerationError) as e:
        gen.generate([{"role": "user", "content": "hi"}])
    assert "pa@ss" not in str(e.value) and "pa%40ss" not in str(e.value)
    assert _Recorder.seen == ["Basic " + base64.b64encode(b"judge:pa@ss").decode()]
