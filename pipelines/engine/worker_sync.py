"""Tasks on a cluster's workers when the output is on a remote store.

A Dataflow, Flink or Spark worker shares no disk with the launching machine. Each task therefore
fetches from the remote work folder exactly the files it reads (its shard's records, the answer of
the step before it, its partition's parts, its model batches already done), runs in a staging
folder of its own process, and pushes what it wrote, its completion marker last. The launching
machine fetches the markers and the small files it decides from (keys, summaries, removed records,
side tables), never the records, until the published output.

``LONGFORGE_WORKER_SYNC=1`` turns this on for Beam's local multi-process runner too (tests: each
worker process then has a staging folder of its own, as a cluster's machines would).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import tempfile
from pathlib import Path

from pipelines import storage
from pipelines.engine import layout, publish
from pipelines.engine.steps import Plan

WORKER_SYNC_ENV = "LONGFORGE_WORKER_SYNC"
#: What the launching machine never fetches: the records between steps and their spills.
PAYLOAD = re.compile(r"(^|/)(records|parts)-\d+\.parquet$|/publish/spill-\d+\.parquet$|/batches/")

_mirrors: dict[str, storage.Mirror] = {}


def wanted(plan: Plan, beam_args: list[str]) -> bool:
    from pipelines.runners.beam_setup import is_cluster

    return bool(plan.remote_output) and (is_cluster(beam_args) or os.environ.get(WORKER_SYNC_ENV) == "1")


def mirror_of(url: str) -> storage.Mirror:
    """This worker process's staging copy of the remote output (one per process, kept for its tasks)."""
    if url not in _mirrors:
        key = hashlib.sha1(url.encode()).hexdigest()[:12]
        folder = Path(tempfile.gettempdir()) / "longforge-worker" / f"{os.getpid()}-{key}"
        _mirrors[url] = storage.Mirror(url, staging=folder)
    return _mirrors[url]


def local_plan(plan: Plan, mirror: storage.Mirror) -> Plan:
    return dataclasses.replace(plan, output_dir=str(mirror.staging))


def relative(plan: Plan, path: Path) -> str:
    return Path(path).relative_to(plan.output_dir).as_posix()


def spill_shard(plan: Plan, i: int, files: publish.OutputFiles) -> dict[int, int]:
    mirror = mirror_of(plan.remote_output)
    local = local_plan(plan, mirror)
    mirror.fetch([relative(local, layout.shard_files(local, local.record_steps[-1], i)["records"])])
    out = publish.spill_shard(local, i, files)
    mirror.push()
    return out


def write_output_file(plan: Plan, j: int, files: publish.OutputFiles, index: dict[int, dict[int, int]]) -> None:
    mirror = mirror_of(plan.remote_output)
    local = local_plan(plan, mirror)
    final = local.record_steps[-1]
    need = [relative(local, layout.shard_files(local, final, i)["records"]) if index[i].get(j) == -1
            else relative(local, publish.publish_dir(local) / f"spill-{i:05d}.parquet")
            for i in sorted(index) if index[i].get(j) is not None]
    mirror.fetch(need)
    publish.write_output_file(local, j, files, index)
    mirror.push()


def fetch_for_driver(mirror: storage.Mirror) -> int:
    """What the workers left that the launching machine reads: markers, keys, summaries, removed
    records, side tables, the published files; not the records between steps."""
    return mirror.pull(everything=True, skip=PAYLOAD)
