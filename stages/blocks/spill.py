"""A group stage's scratch files: what it makes while it reads its group once, kept on disk and read
back in another order (ICP's contexts come out shuffled, so every context is made before the first
is written). Memory holds one offset a row; the rows live in a temporary directory that is removed
when the stage leaves the ``with`` block, whatever happens."""

from __future__ import annotations

import fcntl
import os
import pickle
import shutil
import tempfile
from array import array
from pathlib import Path
from typing import Any

import numpy as np


class RowSpill:
    """Rows of a fixed-size array (token ids, an embedding, a count) and, with ``payloads``, a small
    picklable payload each (the stage's own values, never read from elsewhere), appended in order
    and read back by index. Memory: 8 bytes a row with payloads, none without."""

    def __init__(self, directory: Path, name: str, width: int, dtype: str, payloads: bool = True) -> None:
        self._dtype, self._width = np.dtype(dtype), width
        self._row_bytes = self._dtype.itemsize * width
        self._path = directory / f"{name}.bin"
        self._rows = open(self._path, "w+b")  # noqa: SIM115 (closed by GroupScratch)
        self._payloads = open(directory / f"{name}.pkl", "w+b") if payloads else None  # noqa: SIM115
        self._offsets = array("q", [0])
        self._n = 0
        self._writing = True

    def __len__(self) -> int:
        return self._n

    def append(self, row: np.ndarray, payload: Any = None) -> None:
        if not self._writing:
            raise ValueError("a spill is written first, then read: no append after a read")
        row = np.ascontiguousarray(row, dtype=self._dtype)
        if row.shape != (self._width,):
            raise ValueError(f"a spilled row has shape {row.shape}, not ({self._width},)")
        self._rows.write(row.tobytes())
        self._n += 1
        if self._payloads is not None:
            self._offsets.append(self._offsets[-1] + self._payloads.write(pickle.dumps(payload, protocol=5)))

    def array(self) -> np.ndarray:
        """Every row, as a read-only array mapped from the file (pages read as they are touched)."""
        self._done_writing()
        if not self._n:
            return np.zeros((0, self._width), self._dtype)
        return np.memmap(self._path, dtype=self._dtype, mode="r", shape=(self._n, self._width))

    def _done_writing(self) -> None:
        if self._writing:
            self._rows.flush()
            if self._payloads is not None:
                self._payloads.flush()
            self._writing = False

    def row(self, i: int) -> np.ndarray:
        self._done_writing()
        self._rows.seek(i * self._row_bytes)
        return np.fromfile(self._rows, dtype=self._dtype, count=self._width)

    def payload(self, i: int) -> Any:
        if self._payloads is None:
            raise ValueError("this spill keeps no payloads")
        self._done_writing()
        self._payloads.seek(self._offsets[i])
        return pickle.loads(self._payloads.read(self._offsets[i + 1] - self._offsets[i]))

    def close(self) -> None:
        self._rows.close()
        if self._payloads is not None:
            self._payloads.close()


class ArraySpill:
    """1-D arrays of any length (a document's token ids), appended in order and read back by index,
    whole or a slice. Memory: 8 bytes an array."""

    def __init__(self, directory: Path, name: str, dtype: str) -> None:
        self._dtype = np.dtype(dtype)
        self._file = open(directory / f"{name}.bin", "w+b")  # noqa: SIM115 (closed by GroupScratch)
        self._offsets = array("q", [0])
        self._writing = True

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def append(self, values: np.ndarray) -> None:
        if not self._writing:
            raise ValueError("a spill is written first, then read: no append after a read")
        values = np.ascontiguousarray(values, dtype=self._dtype)
        if values.ndim != 1:
            raise ValueError(f"a spilled array has shape {values.shape}, not one dimension")
        self._file.write(values.tobytes())
        self._offsets.append(self._offsets[-1] + len(values))

    def read(self, i: int, start: int = 0, count: int | None = None) -> np.ndarray:
        if self._writing:
            self._file.flush()
            self._writing = False
        n = self._offsets[i + 1] - self._offsets[i]
        count = n - start if count is None else min(count, n - start)
        self._file.seek((self._offsets[i] + start) * self._dtype.itemsize)
        return np.fromfile(self._file, dtype=self._dtype, count=max(0, count))

    def close(self) -> None:
        self._file.close()


_PREFIX = "longforge-group-"
_LOCK = "in-use.lock"


def _held(lock: Path) -> bool:
    """Whether a live process holds the scratch directory's lock (an flock is released when its
    process dies, whatever pid namespace or container it ran in)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return True  # being made right now (or not ours): left alone
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def remove_orphans(root: Path) -> None:
    """Scratch directories under ``root`` whose process is gone (a worker killed mid-task leaves
    its spill behind; the next group task on that machine removes it)."""
    for d in root.glob(f"{_PREFIX}*"):
        if d.is_dir() and not _held(d / _LOCK):
            shutil.rmtree(d, ignore_errors=True)


class GroupScratch:
    """``with GroupScratch() as scratch: spill = scratch.rows("contexts", L, "int32")``: spills
    in a temporary directory of their own (``TMPDIR``), all removed at the end, or by the next
    group task on the machine when the process was killed."""

    def __enter__(self) -> GroupScratch:
        root = Path(tempfile.gettempdir())
        remove_orphans(root)
        # Locked under another name, then renamed: no other task ever sees it unlocked.
        making = Path(tempfile.mkdtemp(prefix=".longforge-making-", dir=root))
        self._lock = os.open(making / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # held while the directory is in use
        self._path = root / (_PREFIX + making.name[len(".longforge-making-"):])
        os.rename(making, self._path)
        self._spills: list[RowSpill | ArraySpill] = []
        return self

    def arrays(self, name: str, dtype: str) -> ArraySpill:
        spill = ArraySpill(self._path, name, dtype)
        self._spills.append(spill)
        return spill

    def rows(self, name: str, width: int, dtype: str, payloads: bool = True) -> RowSpill:
        spill = RowSpill(self._path, name, width, dtype, payloads)
        self._spills.append(spill)
        return spill

    def __exit__(self, *exc: object) -> None:
        for spill in self._spills:
            spill.close()
        shutil.rmtree(self._path, ignore_errors=True)
        os.close(self._lock)
