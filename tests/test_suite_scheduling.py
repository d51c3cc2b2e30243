"""The suite's own scheduling on both cores (tests/conftest.py): a module's tests run on one
worker, so a module fixture (a product built once, checked by many tests) is built once per run,
while a SPREAD module's tests are handed out one by one. On pytest 9, xdist's ``--dist loadgroup``
silently failed this: every module fixture was built on both workers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter

from tests.conftest import REPO

MODULE = """
import os
import time

import pytest


@pytest.fixture(scope="module")
def built():
    with open(os.environ["BUILT_LOG"], "a") as f:
        f.write(f"{__name__} {os.getpid()}\\n")
    return 1


@pytest.mark.parametrize("k", range(4))
def test_uses_the_module_fixture(built, k):
    time.sleep(0.1)
"""

SPREAD_MODULE = """
import os
import time

import pytest


@pytest.mark.parametrize("k", range(8))
def test_long(k):
    with open(os.environ["RAN_LOG"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(0.3)
"""


def test_each_module_fixture_is_built_once_on_two_workers(tmp_path):
    (tmp_path / "conftest.py").write_text(textwrap.dedent("""
        import pytest

        from tests.conftest import _module_scheduling


        @pytest.hookimpl(tryfirst=True, optionalhook=True)
        def pytest_xdist_make_scheduler(config, log):
            config.option.loadscopereorder = False
            return _module_scheduling()(config, log, spread={"test_spread.py"})
        """))
    for name in ("a", "b", "c"):
        (tmp_path / f"test_{name}.py").write_text(MODULE)
    (tmp_path / "test_spread.py").write_text(SPREAD_MODULE)
    env = {**os.environ, "PYTHONPATH": str(REPO), "BUILT_LOG": str(tmp_path / "built"),
           "RAN_LOG": str(tmp_path / "ran")}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider", str(tmp_path)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "20 passed" in r.stdout
    built = Counter(line.split()[0] for line in (tmp_path / "built").read_text().splitlines())
    assert built == {"test_a": 1, "test_b": 1, "test_c": 1}, built
    ran = Counter((tmp_path / "ran").read_text().split())
    assert len(ran) == 2, ran  # the spread module's tests went to both workers
