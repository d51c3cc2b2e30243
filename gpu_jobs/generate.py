"""Text generation for every product that needs an LLM (self-instruct, answers, rewriting).

One call, ``generate(messages, params) -> text``, two backends:

- ``local``: a causal LM through transformers (an alias such as ``smollm2-135m``, a folder, or a
  cached Hub id; see :mod:`gpu_jobs.lm`), the model's chat template, greedy or seeded sampling.
- ``openai``: any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, SGLang, llama.cpp's
  server, hosted APIs), with a timeout and retries with backoff on connection errors, 429 and 5xx.

:class:`CachedGenerator` keeps every generation in a cache (the catalog's ``generations`` table, or
a worker's :class:`FileGenerationCache` that the driver syncs with it) keyed by (model, prompt hash,
params hash): a rerun generates nothing twice. An API key is read from the
environment variable the caller names and is never logged or stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class GenParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


class GenerationError(RuntimeError):
    """This one request cannot be answered (a prompt over the window, a 4xx, retries spent): the
    caller rejects what asked for it and goes on."""


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str = "stop"  # stop | length (cut by max_new_tokens) | content_filter | ... as the backend says

    @property
    def complete(self) -> bool:
        return self.finish_reason == "stop"


def prompt_hash(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class LocalGenerator:
    """transformers ``generate`` with the model's chat template."""

    backend = "local"

    def __init__(self, model: str, device: str = "auto", rope=None):
        """``rope``: a :class:`gpu_jobs.lm.RopeExtension` (LongPO's long answers come from the same
        model with its window raised); the model is then held apart from the one-model cache, and
        its cache identity names the extension, so extended and plain answers never mix."""
        from gpu_jobs.lm import resolve_causal_lm

        resolve_causal_lm(model)  # a missing model fails here, at once; the weights load on first use
        self.name, self.rope, self._device, self._lm = model, rope, device, None
        self.model = model if rope is None else f"{model}@rope:{rope.kind}x{rope.factor:g}" + (
            f"/{rope.original_positions}" if rope.original_positions else "")

    @property
    def lm(self):
        if self._lm is None:
            from gpu_jobs.lm import load_causal_lm, open_causal_lm

            self._lm = (load_causal_lm(self.name, device=self._device) if self.rope is None
                        else open_causal_lm(self.name, device=self._device, rope=self.rope))
        return self._lm

    @property
    def max_positions(self) -> int:
        return self.lm.max_positions

    def generate(self, messages: list[dict], params: GenParams | None = None) -> str:
        return self.generate_full(messages, params).text

    def generate_full(self, messages: list[dict], params: GenParams | None = None) -> Generation:
        import torch

        p = params or GenParams()
        tok = self.lm.tokenizer
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        ids = {k: v.to(self.lm.device) for k, v in ids.items()}
        limit = self.lm.max_positions - p.max_new_tokens
        if ids["input_ids"].shape[1] > limit:
            raise GenerationError(f"the prompt has {ids['input_ids'].shape[1]} tokens; {self.model} takes "
                                  f"{limit} before {p.max_new_tokens} new ones (no silent truncation)")
        torch.manual_seed(p.seed)
        kwargs = {"max_new_tokens": p.max_new_tokens, "pad_token_id": tok.pad_token_id or tok.eos_token_id}
        if p.temperature > 0:
            kwargs.update(do_sample=True, temperature=p.temperature, top_p=p.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = self.lm.model.generate(**ids, **kwargs)
        new = out[0, ids["input_ids"].shape[1]:]
        text = tok.decode(new, skip_special_tokens=True)
        stopped = bool(len(new)) and int(new[-1]) in _eos_ids(self.lm.model, tok)
        for s in p.stop:
            if s in text:
                text, stopped = text[:text.index(s)], True
        reason = "stop" if stopped or len(new) < p.max_new_tokens else "length"
        return Generation(text, reason)


def _eos_ids(model, tok) -> set[int]:
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    return ids | ({tok.eos_token_id} if tok.eos_token_id is not None else set())


#: Variables that hold a Hugging Face token: never sent to a generation server.
HUB_TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN", "HUGGINGFACE_TOKEN", "HF_HUB_TOKEN")
#: Set by `longforge run --api-key-env NAME` for a key variable outside the allowed names.
ALLOW_KEY_ENV = "LONGFORGE_ALLOW_KEY_ENV"


def key_env_allowed(name: str) -> bool:
    """The variables a pipeline file may send to a generation server as its API key: OPENAI_API_KEY,
    LONGFORGE_<ANYTHING>_API_KEY, or the one named on the command line (`--api-key-env`); never a
    Hub token's. Anything else would let a pipeline file mail any secret of the environment to any
    host it names."""
    if name in HUB_TOKEN_VARS:
        return False
    return (name == "OPENAI_API_KEY" or re.fullmatch(r"LONGFORGE_[A-Z0-9_]+_API_KEY", name) is not None
            or name == os.environ.get(ALLOW_KEY_ENV))


def _is_hub_token(value: str) -> bool:
    """A Hub token by its value: the value of a Hub token variable, or the hf_ shape."""
    if re.fullmatch(r"hf_[A-Za-z0-9]{16,}", value.strip()):
        return True
    return any(os.environ.get(v) and os.environ[v] == value for v in HUB_TOKEN_VARS)


class OpenAIGenerator:
    """An OpenAI-compatible chat endpoint (``base_url`` ends before ``/chat/completions``)."""

    backend = "openai"

    def __init__(self, model: str, base_url: str, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout: float = 120.0, retries: int = 4, backoff: float = 1.0):
        # user:password@ in the URL becomes HTTP basic auth, and the URL kept (for requests and every
        # message, cache key and file) is the one without it.
        from urllib.parse import unquote, urlsplit, urlunsplit

        parts = urlsplit(base_url)
        self._basic = None
        if parts.username is not None or parts.password is not None:
            import base64

            pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            self._basic = base64.b64encode(pair.encode()).decode()
            name = parts.hostname or ""
            host = (f"[{name}]" if ":" in name else name) + (f":{parts.port}" if parts.port else "")
            base_url = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
        self.model, self.base_url = model, base_url.rstrip("/")
        if api_key_env and not key_env_allowed(api_key_env):
            raise GenerationError(f"api_key_env '{api_key_env}' is not a key this server may be sent: use "
                                  "OPENAI_API_KEY or LONGFORGE_<NAME>_API_KEY, or name it with --api-key-env")
        self._key = os.environ.get(api_key_env) if api_key_env else None  # never logged, never stored
        if self._key and _is_hub_token(self._key):
            raise GenerationError(f"the value of {api_key_env} is a Hugging Face token: it is never sent to a "
                                  "generation server -> put the server's own key in that variable")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff

    def generate(self, messages: list[dict], params: GenParams | None = None) -> str:
        return self.generate_full(messages, params).text

    def generate_full(self, messages: list[dict], params: GenParams | None = None) -> Generation:
        p = params or GenParams()
        body = {"model": self.model, "messages": messages, "max_tokens": p.max_new_tokens,
                "temperature": p.temperature, "top_p": p.top_p, "seed": p.seed}
        if p.stop:
            body["stop"] = list(p.stop)
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        elif self._basic:
            headers["Authorization"] = f"Basic {self._basic}"
        req = urllib.request.Request(f"{self.base_url}/chat/completions", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
        last = None
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    data = json.loads(resp.read())
                try:
                    choice = data["choices"][0]
                    content = (choice.get("message") or {}).get("content")
                except (KeyError, IndexError, TypeError, AttributeError):
                    raise GenerationError(f"{self.base_url} answered without a choice: {str(data)[:300]}") from None
                reason = choice.get("finish_reason") or "stop"
                if content is None:  # a refusal or a filtered answer comes with no content at all
                    return Generation("", reason if reason != "stop" else "no_content")
                return Generation(str(content), reason)
            except urllib.error.HTTPError as e:
                if e.code != 429 and e.code < 500:
                    detail = e.read().decode(errors="replace")[:500]
                    raise GenerationError(f"{self.base_url} answered {e.code}: {detail}") from e
                last = f"HTTP {e.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
        raise GenerationError(f"{self.base_url}: no answer after {self.retries + 1} tries ({last})")


class GenerationCache(Protocol):
    """Where generations are kept by (model, prompt hash, params hash): the catalog on the driver,
    a :class:`FileGenerationCache` on a worker."""

    def cached_generation(self, model: str, prompt_hash: str, params_hash: str) -> tuple[str, str] | None:
        """(text, params JSON: the request's parameters and the generation's ``finish_reason``)."""

    def add_generation(self, model: str, prompt_hash: str, params_hash: str, *, backend: str, params: str,
                       text: str) -> None: ...


class FileGenerationCache:
    """The generation cache of a worker: JSON-lines files in one folder, all read when it opens;
    what this process generates is appended to a file of its own (``gen-<host>-<pid>.jsonl``), so
    workers never write one file together, and a killed worker loses at most the line it was
    writing (a torn last line is skipped when read). The driver exports the catalog's generations
    into the folder before a run and imports the new ones after it."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._known: dict[tuple[str, str, str], tuple[str, str]] = {}
        for f in sorted(self.folder.glob("*.jsonl")):
            for row in read_generation_lines(f):
                self._known.setdefault((row["model"], row["prompt_hash"], row["params_hash"]),
                                       (row["text"], row.get("params") or "{}"))
        self._own = self.folder / f"gen-{socket.gethostname()}-{os.getpid()}.jsonl"

    def cached_generation(self, model: str, prompt_hash: str, params_hash: str) -> tuple[str, str] | None:
        return self._known.get((model, prompt_hash, params_hash))

    def add_generation(self, model: str, prompt_hash: str, params_hash: str, *, backend: str, params: str,
                       text: str) -> None:
        self._known[(model, prompt_hash, params_hash)] = (text, params)
        row = {"model": model, "prompt_hash": prompt_hash, "params_hash": params_hash, "backend": backend,
               "params": params, "text": text}
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self._own, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_generation_lines(path: Path) -> Iterator[dict]:
    """The complete lines of a cache file (a line torn by a kill is skipped)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                return
            try:
                yield json.loads(line)
            except ValueError:
                continue


class CachedGenerator:
    """Any generator, with its results kept in a :class:`GenerationCache`: the same (model, prompt,
    params) is generated once, whichever run asks."""

    def __init__(self, inner, cache: GenerationCache):
        self.inner, self.cache = inner, cache
        self.calls = 0  # generations actually made (cache misses)
        self.hits = 0  # generations the cache answered

    @property
    def model(self) -> str:
        return self.inner.model

    def generate(self, messages: list[dict], params: GenParams | None = None) -> str:
        return self.generate_full(messages, params).text

    def generate_full(self, messages: list[dict], params: GenParams | None = None) -> Generation:
        """Every generation is kept with how it ended (``finish_reason`` in its params JSON), so a
        cut or filtered one is recognised again from the cache, never asked twice."""
        p = params or GenParams()
        key = (self.inner.model, prompt_hash(messages), p.key())
        hit = self.cache.cached_generation(*key)
        if hit is not None:
            self.hits += 1
            text, stored = hit
            try:
                reason = json.loads(stored).get("finish_reason", "stop")
            except (ValueError, AttributeError):
                reason = "stop"
            return Generation(text, reason)
        gen = self.inner.generate_full(messages, p)
        self.calls += 1
        self.cache.add_generation(*key, backend=self.inner.backend, text=gen.text,
                                  params=json.dumps({**asdict(p), "finish_reason": gen.finish_reason}, sort_keys=True))
        return gen


def make_generator(model: str, backend: str = "local", base_url: str | None = None,
                   api_key_env: str | None = "OPENAI_API_KEY", cache: GenerationCache | None = None, **kwargs):
    if backend == "local":
        gen = LocalGenerator(model, **kwargs)
    elif backend == "openai":
        if not base_url:
            raise ValueError("the openai backend needs base_url (e.g. http://localhost:8000/v1)")
        gen = OpenAIGenerator(model, base_url, api_key_env=api_key_env, **kwargs)
    else:
        raise ValueError(f"unknown generation backend '{backend}' (local, openai)")
    return CachedGenerator(gen, cache) if cache is not None else gen
