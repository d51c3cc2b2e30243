"""Shared fixtures: real corpora (built from the packages `make test` fetches) and helpers."""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per worker for torch, BLAS and the Rust tokenizers (and the processes a test starts,
    # which inherit it): two workers on two cores, each with its own thread pool, fight. Set before
    # this file imports numpy (through pyarrow), whose BLAS reads it once.
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ.setdefault(_var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
LONGFORGE = [sys.executable, "-m", "pipelines.commands.main"]

# Running on both cores (`make test`: pytest-xdist). Each test module is one unit of work, so its
# module fixtures (a product built once, checked by many tests) are built once, on one worker; the
# modules in SPREAD instead hand out their tests one by one (their fixtures are cheap and each test
# is long). The longest modules are handed out first, so no worker is left alone with a long module
# at the end (figures: `make test`'s --durations; 2026-12-03).
SPREAD = {"tests/pipelines/test_products_on_runners.py", "tests/pipelines/runners/test_dataflow_graph.py"}
LONG_FIRST = ["tests/pipelines/test_products_on_runners.py", "tests/gpu_jobs/test_scoring.py",
              "tests/gpu_jobs/test_scoring_job.py",
              "tests/pipelines/test_resume.py", "tests/pipelines/test_icp_pipeline.py",
              "tests/pipelines/test_safety.py", "tests/pipelines/test_safety_runs.py",
              "tests/pipelines/test_gateau_pipeline.py",
              "tests/pipelines/test_longalign_pipeline.py", "tests/pipelines/runners/test_runners.py"]


def _module(nodeid: str) -> str:
    return nodeid.split("::")[0]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    rank = {m: k for k, m in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(_module(item.nodeid), len(rank)))  # stable: file order otherwise


def _module_scheduling():
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        """xdist's scope scheduler with a module as the scope (a module of SPREAD: each test), in
        collection order. Not ``--dist loadgroup``: its groups are a suffix xdist writes into
        ``item._nodeid``, which pytest 9 no longer reads, so every module fixture was built on both
        workers."""

        def __init__(self, config, log=None, spread: set[str] = frozenset()):
            super().__init__(config, log)
            self.spread = spread

        def _split_scope(self, nodeid: str) -> str:
            return nodeid if _module(nodeid) in self.spread else _module(nodeid)

    return ModuleScheduling


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    config.option.loadscopereorder = False  # keep LONG_FIRST's order, not "most tests first"
    return _module_scheduling()(config, log, spread=SPREAD)


def shared_dir(tmp_path_factory, name: str, build) -> Path:
    """A folder that ``build(folder)`` fills once per test session, whichever worker asks first:
    the parallel workers of one session share it (the others wait for it), so a session fixture
    costs its work once, not once per worker. A folder that holds ``.done`` is complete."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = root / f"shared-{name}"
    with open(root / f"shared-{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (folder / ".done").exists():
                import shutil

                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                build(folder)
                (folder / ".done").touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return folder


@pytest.fixture(scope="session")
def corpora_dir(tmp_path_factory) -> Path:
    """Paul Graham essays, KJV chapters and Python docs as Parquet document datasets."""
    from pipelines.commands import corpora

    def build(root: Path) -> None:
        for name in ("paul_graham", "kjv_chapters", "python_docs"):
            try:
                corpora.build(name, str(root / name))
            except corpora.CorpusNotAvailable as e:  # pragma: no cover - set-up problem, say how to fix
                pytest.fail(f"{e} (make test runs the set-up that fetches the corpora)")

    return shared_dir(tmp_path_factory, "corpora", build)


@pytest.fixture(scope="session")
def real_docs(corpora_dir) -> list[dict]:
    rows = []
    for name in ("paul_graham", "kjv_chapters", "python_docs"):
        rows += pq.read_table(str(corpora_dir / name / "data")).to_pylist()
    return rows


def decisions(outs) -> list:
    """The records and decisions of a stage's outcomes, its Measured counts left out."""
    from stages.base import Measured

    return [o for o in outs if not isinstance(o, Measured)]


def read_as_stream(records: list[dict], read: list[str]):
    """A group's records handed to ``build`` one at a time, each id noted in ``read`` as it is taken:
    what a streaming stage has read when it gives its first outcome."""
    for r in records:
        read.append(r["id"])
        yield r


def write_jsonl(path: Path, records: list) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def write_pipeline(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """The `longforge` command as a user runs it, in a fresh process."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run([*LONGFORGE, *args], cwd=cwd or REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def tokenized_docs(corpora_dir, tmp_path_factory) -> dict[str, list[int]]:
    """The three corpora's documents as token ids (SmolLM2, EOS appended), by document id, from a
    pipeline of `tokenize_ids` alone: what decomposition and UtK cut up, produced independently of
    them."""
    def build(base: Path) -> None:
        _tokenize_corpora(corpora_dir, base)

    base = shared_dir(tmp_path_factory, "tokens", build)
    t = pq.read_table(str(base / "out" / "data"), columns=["id", "input_ids"])
    return dict(zip(t.column("id").to_pylist(), t.column("input_ids").to_pylist(), strict=True))


def _tokenize_corpora(corpora_dir: Path, base: Path) -> None:
    spec = write_pipeline(base / "tokens.yaml", """
        name: tokens
        seed: 0
        inputs: []
        stages:
          - stage: tokenize_ids
            params: {tokenizer: smollm2, append_eos: true, keep_text: false}
        """)
    args = ["run", str(spec), "--output", str(base / "out"), "--catalog", str(base / "c.duckdb"), "--quiet"]
    for name in ("paul_graham", "kjv_chapters", "python_docs"):
        args += ["--input", str(corpora_dir / name)]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]


def build_corpus(name: str, parent: Path) -> str:
    """Corpus ``name`` (OFFLINE.md's packages) built into ``parent/name``; returns the folder."""
    from pipelines.commands import corpora

    folder, _ = corpora.build(name, str(parent / name))
    return folder


def run_twice(spec: Path, inp: str, base: Path) -> list[Path]:
    """The pipeline run twice on the same input into ``base/out0`` and ``base/out1`` (one catalog,
    ``base/c.duckdb``): what determinism tests compare."""
    outs = []
    for k in range(2):
        done = run_cli("run", str(spec), "--input", inp, "--output", str(base / f"out{k}"), "--catalog",
                       str(base / "c.duckdb"), "--quiet")
        assert done.returncode == 0, done.stderr[-3000:]
        outs.append(base / f"out{k}")
    return outs


def normalized_run(real_docs: list[dict], base: Path, n: int) -> tuple[Path, Path, Path]:
    """(pipeline, input, output) of a finished one-stage run (normalize) over the first ``n`` real
    documents, catalogued in ``base/c.duckdb``: the smallest real run a catalog or safety test needs."""
    src = write_jsonl(base / "in.jsonl", [{"id": r["id"], "text": r["text"]} for r in real_docs[:n]])
    pipe = write_pipeline(base / "p.yaml", """
        name: small
        stages:
          - stage: normalize
        """)
    r = run_cli("run", str(pipe), "--input", str(src), "--output", str(base / "out"), "--catalog",
                str(base / "c.duckdb"), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    return pipe, src, base / "out"
