"""Replay a Dataset Decomposition schedule in a training loop (PyTorch).

    from stages.decomposition.vsl_replay import VslScheduleDataset
    data = VslScheduleDataset("out/decomposition", rank=rank, world_size=world_size)
    for batch in torch.utils.data.DataLoader(data, batch_size=None):
        batch["input_ids"]  # LongTensor [sequences of this rank, 2^i (+1)]: one bucket per step

Every rank reads the same ``buckets/schedule.parquet``, so all ranks draw the same bucket at each
step; each takes its share of the step's sequences. Tokens come from ``buckets/D<i>/tokens.bin``
through numpy.memmap: nothing is loaded that the step does not use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

try:
    import torch
    from torch.utils.data import IterableDataset
except ImportError:  # pragma: no cover - torch is installed with the project's models extra
    torch = None
    IterableDataset = object


class BucketStore:
    """The flat token file and index of every bucket, memory-mapped."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.tokens: dict[int, np.memmap] = {}
        self.index: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for folder in sorted(self.root.glob("D*")):
            i = int(folder.name[1:])
            t = pq.read_table(folder / "index.parquet", columns=["start", "end"])
            self.index[i] = (t.column("start").to_numpy(), t.column("end").to_numpy())
            self.tokens[i] = np.memmap(folder / "tokens.bin", dtype="<i4", mode="r")

    def sequence(self, bucket: int, row: int) -> np.ndarray:
        start, end = self.index[bucket][0][row], self.index[bucket][1][row]
        return np.asarray(self.tokens[bucket][start:end])


class VslScheduleDataset(IterableDataset):
    """Yields one dict per step: step, cycle, bucket, seq_rows and input_ids for this rank."""

    def __init__(self, output_dir: str | Path, rank: int = 0, world_size: int = 1, start_step: int = 0):
        if torch is None:
            raise ImportError("VslScheduleDataset needs torch (make setup installs it)")
        root = Path(output_dir) / "buckets"
        self.store = BucketStore(root)
        self.schedule = pq.read_table(root / "schedule.parquet",
                                      columns=["step", "cycle", "bucket", "seq_rows"]).to_pylist()
        self.rank, self.world_size, self.start_step = rank, world_size, start_step

    def __len__(self) -> int:
        return len(self.schedule) - self.start_step

    def __iter__(self):
        for s in self.schedule[self.start_step:]:
            rows = s["seq_rows"]
            if len(rows) % self.world_size:
                raise ValueError(f"step {s['step']}: {len(rows)} sequences do not split over {self.world_size} "
                                 "ranks; choose a budget that is a multiple of world_size x 2^max_exp")
            share = len(rows) // self.world_size
            mine = rows[self.rank * share:(self.rank + 1) * share]
            ids = np.stack([self.store.sequence(s["bucket"], r) for r in mine])
            yield {"step": s["step"], "cycle": s["cycle"], "bucket": s["bucket"], "seq_rows": mine,
                   "input_ids": torch.from_numpy(ids.astype(np.int64))}
