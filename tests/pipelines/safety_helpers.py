"""What the safety tests share: the pipeline they run and how they look at what it left."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.parquet as pq

from catalog import Catalog
from tests.conftest import run_cli

PIPELINE = """
name: safety
stages:
  - stage: normalize
  - stage: exact_dedup
"""


def _run(pipeline: Path, tmp_path: Path, *args: str, catalog: str = "c.duckdb"):
    return run_cli("run", str(pipeline), "--catalog", str(tmp_path / catalog), "--quiet", *args)


def _digest_tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _output_rows(out: Path) -> list[dict]:
    return pq.read_table(str(out / "data")).to_pylist()


def _catalog_rows(tmp_path: Path, sql: str, catalog: str = "c.duckdb") -> list[tuple]:
    return Catalog(str(tmp_path / catalog)).query(sql)[1]
