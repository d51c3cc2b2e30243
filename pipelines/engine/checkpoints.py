"""A model stage's finished batches, kept until their shard is written, so a killed run never computes one again."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import orjson

from pipelines.engine.accounting import jsonable
from stages.base import Dropped, Measured, Rejected, SideRow


class BatchCheckpoints:
    """A model stage's finished batches of one shard, one file each, under the step's work folder
    (whose name carries the step's fingerprint): a killed run's rerun reads them back instead of
    loading the model and computing them again. Each file names the ids of its batch, so a file
    from other input is never taken for this one."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.computed: dict[str, int] = defaultdict(int)
        self.reused: dict[str, int] = defaultdict(int)

    def _path(self, label: str, k: int) -> Path:
        return self.folder / f"{label}-batch-{k:06d}.json"

    def load(self, label: str, k: int, batch: list[dict]) -> list[list] | None:
        try:
            saved = orjson.loads(self._path(label, k).read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None
        if saved.get("ids") != [r["id"] for r in batch]:
            return None
        self.reused[label] += 1
        return [[_outcome_from_json(o) for o in outs] for outs in saved["outcomes"]]

    def save(self, label: str, k: int, batch: list[dict], results: list[list]) -> None:
        self.computed[label] += 1
        data = {"ids": [r["id"] for r in batch], "outcomes": [[_outcome_to_json(o) for o in outs] for outs in results]}
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(label, k)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY, default=jsonable))
        os.replace(tmp, path)

    def tally(self) -> dict[str, dict[str, int]]:
        return {label: {"batches_computed": self.computed[label], "batches_reused": self.reused[label]}
                for label in sorted(set(self.computed) | set(self.reused))}


def _outcome_to_json(o) -> dict:
    if isinstance(o, dict):
        return {"record": o}
    if isinstance(o, SideRow):
        return {"side": [o.table, o.row]}
    if isinstance(o, Measured):
        return {"measured": o.values}
    kind = "rejected" if isinstance(o, Rejected) else "dropped"
    return {kind: [o.record_id, o.reason, o.detail] + ([o.payload] if isinstance(o, Rejected) else [])}


def _outcome_from_json(o: dict):
    if "record" in o:
        return o["record"]
    if "side" in o:
        return SideRow(*o["side"])
    if "measured" in o:
        return Measured(o["measured"])
    if "rejected" in o:
        return Rejected(*o["rejected"])
    return Dropped(*o["dropped"])
