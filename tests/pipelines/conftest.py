"""Fixtures the safety tests share (tests/pipelines/test_safety*.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write_pipeline
from tests.pipelines.safety_helpers import PIPELINE


@pytest.fixture(scope="module")
def docs(real_docs) -> list[dict]:
    """60 KJV chapters: real text nobody here wrote, each distinct."""
    rows = [{"id": r["id"], "text": r["text"]} for r in real_docs if r["source"] == "kjv"][:60]
    assert len({r["text"] for r in rows}) == 60
    return rows


@pytest.fixture()
def pipeline(tmp_path) -> Path:
    return write_pipeline(tmp_path / "p.yaml", PIPELINE)
