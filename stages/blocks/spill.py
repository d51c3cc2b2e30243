"""A group stage's scratch files: what it makes while it reads its group once, kept on disk and read
back in another order (ICP's contexts come out shuffled, so every context is made before the first
is written). Memory holds one offset a row; the rows live in a temporary directory that is removed
when the stage leaves the ``with`` block, whatever happens."""

from __future__ import annotations

import pickle
import tempfile
from array import array
from pathlib import Path
from typing import Any

import numpy as np


class RowSpill:
    """Rows of a fixed-size array (token ids, an embedding) and, optionally, a small picklable
    payload each, appended in order and read back by index."""

    def __init__(self, directory: Path, name: str, width: int, dtype: str) -> None:
        self._dtype, self._width = np.dtype(dtype), width
        self._row_bytes = self._dtype.itemsize * width
        self._rows = open(directory / f"{name}.bin", "w+b")  # noqa: SIM115 (closed by GroupScratch)
        self._payloads = open(directory / f"{name}.pkl", "w+b")  # noqa: SIM115
        self._offsets = array("q", [0])
        self._writing = True

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def append(self, row: np.ndarray, payload: Any = None) -> None:
        row = np.ascontiguousarray(row, dtype=self._dtype)
        if row.shape != (self._width,):
            raise ValueError(f"a spilled row has shape {row.shape}, not ({self._width},)")
        self._rows.write(row.tobytes())
        self._offsets.append(self._offsets[-1] + self._payloads.write(pickle.dumps(payload, protocol=5)))

    def _done_writing(self) -> None:
        if self._writing:
            self._rows.flush()
            self._payloads.flush()
            self._writing = False

    def row(self, i: int) -> np.ndarray:
        self._done_writing()
        self._rows.seek(i * self._row_bytes)
        return np.frombuffer(self._rows.read(self._row_bytes), dtype=self._dtype)

    def payload(self, i: int) -> Any:
        self._done_writing()
        self._payloads.seek(self._offsets[i])
        return pickle.loads(self._payloads.read(self._offsets[i + 1] - self._offsets[i]))

    def rows(self, index: np.ndarray | list[int]) -> np.ndarray:
        """Several rows at once (one read each), as one array."""
        return np.stack([self.row(int(i)) for i in index]) if len(index) else np.zeros((0, self._width), self._dtype)

    def close(self) -> None:
        self._rows.close()
        self._payloads.close()


class GroupScratch:
    """``with GroupScratch() as scratch: spill = scratch.rows("contexts", L, "int32")``: spills
    in a temporary directory of their own, all removed at the end."""

    def __enter__(self) -> GroupScratch:
        self._dir = tempfile.TemporaryDirectory(prefix="longforge-group-")
        self._spills: list[RowSpill] = []
        return self

    def rows(self, name: str, width: int, dtype: str) -> RowSpill:
        spill = RowSpill(Path(self._dir.name), name, width, dtype)
        self._spills.append(spill)
        return spill

    def __exit__(self, *exc: object) -> None:
        for spill in self._spills:
            spill.close()
        self._dir.cleanup()
