"""One way to start a Beam pipeline, shared by the Beam runner and by stages that run Beam jobs."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions


def new_pipeline(workers: int = 1, beam_args: list[str] | None = None) -> beam.Pipeline:
    """Any runner named in ``beam_args`` (``--runner=DataflowRunner`` ...); otherwise Beam's
    FnApiRunner, in-process or with ``workers`` processes, asked for explicitly so that Beam never
    tries to download the Prism runner."""
    args = list(beam_args or [])
    if any(a.startswith("--runner") for a in args):
        return beam.Pipeline(options=PipelineOptions(args))
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    mode = (["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}",
             "--default_sdk_harness_log_level=WARNING"] if workers > 1 else ["--direct_running_mode=in_memory"])
    return beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions(args + mode))
