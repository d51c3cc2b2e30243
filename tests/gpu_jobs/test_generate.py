"""The generation interface: the OpenAI-compatible client against a real local HTTP server process
serving the bundled SmolLM2 (tests/fixtures/openai_server.py), the local backend, and the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from catalog import Catalog
from gpu_jobs.generate import CachedGenerator, GenerationError, GenParams, LocalGenerator, OpenAIGenerator
from tests.conftest import REPO

MESSAGES = [{"role": "user", "content": "Name three colours of the rainbow."}]


def _server(*extra):
    proc = subprocess.Popen([sys.executable, "-m", "tests.fixtures.openai_server", *extra], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("PORT "), line
    return proc, int(line.split()[1])


@pytest.fixture(scope="module")
def server():
    proc, port = _server()
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait()


def _stats(base: str) -> dict:
    with urllib.request.urlopen(f"{base}/stats", timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def local():
    return LocalGenerator("smollm2-135m", device="cpu")


def test_http_backend_gives_what_the_local_model_gives(server, local):
    params = GenParams(max_new_tokens=24)
    client = OpenAIGenerator("smollm2-135m", f"{server}/v1", api_key_env=None)
    text = client.generate(MESSAGES, params)
    assert text.strip() and text == local.generate(MESSAGES, params)  # greedy: the same words


def test_cache_generates_nothing_twice(server, tmp_path):
    catalog = Catalog(str(tmp_path / "c.duckdb"))
    gen = CachedGenerator(OpenAIGenerator("smollm2-135m", f"{server}/v1", api_key_env=None), catalog)
    params = GenParams(max_new_tokens=12)
    before = _stats(server)["served"]
    first = gen.generate(MESSAGES, params)
    again = CachedGenerator(OpenAIGenerator("smollm2-135m", f"{server}/v1", api_key_env=None), catalog)
    assert again.generate(MESSAGES, params) == first and again.calls == 0
    assert _stats(server)["served"] == before + 1
    # 12 tokens cut the reply: the cache knows it was cut, and says so without asking again
    assert again.generate_full(MESSAGES, params).finish_reason == "length" and again.calls == 0
    other = again.generate(MESSAGES, GenParams(max_new_tokens=13))  # other params: generated anew
    assert again.calls == 1 and other.startswith(first[:5])


def test_retries_on_503_then_succeeds_and_fails_clearly_when_down(tmp_path):
    proc, port = _server("--fail-first", "2")
    try:
        gen = OpenAIGenerator("smollm2-135m", f"http://127.0.0.1:{port}/v1", api_key_env=None, backoff=0.05)
        assert gen.generate(MESSAGES, GenParams(max_new_tokens=4))
        assert _stats(f"http://127.0.0.1:{port}")["failed"] == 2
    finally:
        proc.terminate()
        proc.wait()
    down = OpenAIGenerator("m", f"http://127.0.0.1:{port}/v1", api_key_env=None, retries=1, backoff=0.01, timeout=2)
    with pytest.raises(GenerationError, match="no answer after 2 tries"):
        down.generate(MESSAGES)


def test_a_prompt_beyond_the_window_is_an_error_not_a_truncation(local):
    long = [{"role": "user", "content": "word " * 9000}]
    with pytest.raises(GenerationError, match="no silent truncation"):
        local.generate(long, GenParams(max_new_tokens=8))


def test_a_rope_extended_local_model_takes_the_longer_prompt_and_is_cached_apart(local, tmp_path):
    """LongPO's rejected answers: the same model with its window raised (spec longpo.md 3.6)."""
    from gpu_jobs.generate import FileGenerationCache
    from gpu_jobs.lm import RopeExtension

    extended = LocalGenerator("smollm2-135m", device="cpu", rope=RopeExtension("dynamic", 2.0))
    assert extended.max_positions == 2 * local.max_positions and extended.model != local.model
    cache = FileGenerationCache(tmp_path)
    short = [{"role": "user", "content": "Say one word."}]
    CachedGenerator(local, cache).generate(short, GenParams(max_new_tokens=3))
    again = CachedGenerator(extended, cache)
    again.generate(short, GenParams(max_new_tokens=3))
    assert again.calls == 1  # the plain model's answer is not the extended model's
