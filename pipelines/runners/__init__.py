"""Runners execute a plan. Each returns an :class:`Execution`; the driver does the bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass

RUNNERS = ("local", "beam", "datatrove")


@dataclass
class Execution:
    stats: list[dict]  # one row per (step, stage): in, out, rejected, dropped, inputs_with_output, seconds
    removed: list[str]  # files of every rejected, dropped or truncated record, with stage, reason and detail
    files: list[str]  # the output Parquet files
    input_counts: dict[int, int] | None = None  # records read per input


def make_runner(name: str, *, workers: int = 1, beam_args: list[str] | None = None, progress=None):
    if name == "local":
        from pipelines.runners.local import LocalRunner

        return LocalRunner(workers, progress)
    if name == "beam":
        from pipelines.runners.beam import BeamRunner

        return BeamRunner(workers, beam_args or [], progress)
    if name == "datatrove":
        from pipelines.runners.datatrove import DatatroveRunner

        return DatatroveRunner(workers, progress)
    raise ValueError(f"unknown runner '{name}' (expected one of {', '.join(RUNNERS)})")
