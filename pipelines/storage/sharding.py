"""Input planned as shards, so that work can be parallelised and resumed: byte ranges of plain
JSONL, row-group runs of Parquet, groups of text files, Arrow files of a saved HF dataset; what
each input names (folders walked, globs expanded, formats detected, what cannot be read refused)."""

from __future__ import annotations

import glob
import gzip
import os
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.spec import InputSpec, ReadSpec

MB = 1 << 20


@dataclass(frozen=True)
class Shard:
    """One unit of input work; ``start``/``end`` are bytes (JSONL), row groups (Parquet) or file indexes."""

    index: int
    input_index: int
    format: str
    paths: tuple[str, ...]
    start: int = 0
    end: int = -1

    def to_json(self) -> dict:
        return asdict(self)

    def label(self) -> str:
        name = os.path.basename(self.paths[0]) + (f"+{len(self.paths) - 1}" if len(self.paths) > 1 else "")
        return f"{name}[{self.start}:{self.end}]"


class InputError(ValueError):
    """An input that cannot be read as given (mixed formats, a file given twice, a damaged file),
    found while planning, before any work. ``index`` is the input's position in the pipeline."""

    def __init__(self, index: int, message: str, fix: str):
        self.index, self.fix = index, fix
        super().__init__(message)


JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".ndjson.gz",
                  ".json.zst", ".ndjson.zst")
#: Most shards one run may plan: more is a mistake in ``shard_mb`` (each shard leaves files).
MAX_SHARDS = 100_000


def _kind_of(name: str) -> str:
    low = name.lower()
    if low.endswith(".parquet"):
        return "parquet"
    if low.endswith(JSONL_SUFFIXES):
        return "jsonl"
    return "other"


def _walk(root: str) -> tuple[list[str], int, list[str], list[str]]:
    """Visible files under ``root`` (symlinks followed, each real file once, loops cut), the number
    of hidden entries left out, the paths that reached a file already listed, and the entries that
    are not files (FIFOs, devices, dangling links: never read), each with what it is."""
    files: list[str] = []
    seen_files: set[str] = set()
    seen_dirs: set[str] = set()
    repeats: list[str] = []
    special: list[str] = []
    hidden = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a link back into a folder already walked
            dirnames[:] = []
            repeats.append(dirpath)
            continue
        seen_dirs.add(real)
        hidden += sum(1 for d in dirnames if d.startswith(".")) + sum(1 for f in filenames if f.startswith("."))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            path = os.path.join(dirpath, f)
            if not os.path.isfile(path):
                if os.path.lexists(path):  # a FIFO, socket or device (or a dangling link): never read
                    special.append(f"{path} ({_kind_of_entry(path)})")
                continue
            rp = os.path.realpath(path)
            if rp in seen_files:
                repeats.append(path)
                continue
            seen_files.add(rp)
            files.append(path)
    return sorted(files), hidden, repeats, special


def _kind_of_entry(path: str) -> str:
    """What a path that is not a regular file is, in words."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "a dangling link"
    if stat.S_ISFIFO(mode):
        return "a pipe or FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def check_input_file(path: str, fmt: str) -> None:
    """Refuse, before any work, what cannot be read as a file: a pipe (``<(cmd)``, /dev/stdin, a
    FIFO would block), a device (/dev/zero never ends), and an empty or blank JSONL file.
    A run plans from a file, reads it, and resumes from it: all three need a regular file."""
    if storage.is_remote(path):
        return
    if not os.path.isfile(path):
        raise ValueError(f"input '{path}' is {_kind_of_entry(path)}, not a file (a run plans from its input, "
                         "reads it, and rereads it to resume)", "save it to a file first (cmd > in.jsonl)")
    if fmt == "jsonl" and not path.endswith((".gz", ".zst")):
        with open(path, "rb") as f:  # the first non-blank byte: at once for any real file
            while chunk := f.read(MB):
                if chunk.strip():
                    return
        raise ValueError(f"input '{path}' is empty (no record in it)", "give a file with records in it")


def _remote_format(path: str) -> str:
    if not storage.remote_isdir(path):
        return ""
    files = storage.remote_files(path)
    if any(os.path.basename(f) in ("dataset_info.json", "state.json") for f in files):
        return "hf"
    kinds = {_kind_of(f) for f in files}
    if "parquet" in kinds and "jsonl" in kinds:
        return "mixed"
    return "parquet" if "parquet" in kinds else "jsonl" if "jsonl" in kinds else "text"


def detect_format(path: str) -> str:
    p = path.lower()
    if storage.is_remote(path) and (fmt := _remote_format(path)):
        return fmt
    if not storage.is_remote(path) and os.path.isdir(path):
        if os.path.exists(os.path.join(path, "dataset_info.json")) or os.path.exists(
            os.path.join(path, "state.json")
        ):
            return "hf"
        kinds = {_kind_of(f) for f in _walk(path)[0]}
        if "parquet" in kinds and "jsonl" in kinds:
            return "mixed"
        if "parquet" in kinds:
            return "parquet"
        if "jsonl" in kinds:
            return "jsonl"
        return "text"
    if p.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if p.endswith(".parquet"):
        return "parquet"
    if p.endswith((".gz", ".zst")):
        return "jsonl"
    return "text"


def expand_paths(inp: InputSpec, fmt: str, notes: list[str] | None = None) -> list[str]:
    """The files of one input. A folder is walked once (links followed, never twice to one file);
    files of other formats in it are left out and said so in ``notes``."""
    notes = notes if notes is not None else []
    if storage.is_remote(inp.path):
        return _expand_remote(inp, fmt, notes)
    path = os.path.expanduser(inp.path)
    if any(ch in path for ch in "*?["):
        found, seen = [], set()
        for f in sorted(glob.glob(path, recursive=True)):
            if not os.path.isfile(f):
                continue
            rp = os.path.realpath(f)
            if rp in seen:
                notes.append(f"input '{inp.path}': {f} is the same file as another match; read once")
                continue
            seen.add(rp)
            found.append(f)
    elif os.path.isdir(path) and fmt != "hf":
        files, hidden, repeats, special = _walk(path)
        if fmt == "text":
            found = files
        else:
            found = [f for f in files if _kind_of(f) == fmt]
            others = [os.path.relpath(f, path) for f in files if _kind_of(f) != fmt]
            if others:
                notes.append(f"input '{inp.path}': read as {fmt}; {len(others)} other file(s) not read: "
                             + ", ".join(others[:5]) + (" ..." if len(others) > 5 else ""))
        if hidden:
            notes.append(f"input '{inp.path}': {hidden} hidden entries (names starting with '.') not read")
        if repeats:
            notes.append(f"input '{inp.path}': {len(repeats)} link(s) lead to files or folders already read "
                         f"(e.g. {repeats[0]}); each file is read once")
        if special:
            notes.append(f"input '{inp.path}': {len(special)} entries are not files and were not read: "
                         + "; ".join(special[:5]) + (" ..." if len(special) > 5 else ""))
    else:
        found = [path] if os.path.exists(path) else []
    if not found:
        raise FileNotFoundError(f"input '{inp.path}' matches no files")
    return found



def _expand_remote(inp: InputSpec, fmt: str, notes: list[str]) -> list[str]:
    """A remote input's objects: a glob's matches, a folder's visible files of the format, or the one object."""
    path = inp.path
    if fmt == "hf":
        raise InputError(0, f"'{path}' is a saved HF dataset on remote storage, which is read locally only",
                         "copy it to a local folder, or export it as Parquet")
    if any(ch in path.split("://", 1)[1] for ch in "*?["):
        found = storage.remote_glob(path)
    elif storage.remote_isdir(path):
        files = storage.remote_files(path)
        found = files if fmt == "text" else [f for f in files if _kind_of(f) == fmt]
        others = len(files) - len(found)
        if others:
            notes.append(f"input '{path}': read as {fmt}; {others} other file(s) not read")
    else:
        found = [path] if storage.remote_exists(path) else []
    if not found:
        raise FileNotFoundError(f"input '{path}' matches no files")
    return found


def _open_parquet(path: str) -> pq.ParquetFile:
    return pq.ParquetFile(storage.open_binary(path) if storage.is_remote(path) else path)


def _parquet_meta(path: str, index: int):
    try:
        return _open_parquet(path).metadata
    except (pa.ArrowException, OSError) as e:
        raise InputError(index, f"'{path}' is not a readable Parquet file ({e})",
                         "re-export it, or remove it from the input") from None


def plan_shards(inputs: list[InputSpec], read: ReadSpec, notes: list[str] | None = None) -> list[Shard]:
    shards: list[Shard] = []
    target = max(1, int(read.shard_mb * MB))
    owner: dict[str, tuple[int, str]] = {}  # real path -> (input index, path as given)
    for ii, inp in enumerate(inputs):
        fmt = inp.format if inp.format != "auto" else detect_format(os.path.expanduser(inp.path))
        if fmt == "mixed":
            files = (storage.remote_files(inp.path) if storage.is_remote(inp.path)
                     else _walk(os.path.expanduser(inp.path))[0])
            n_pq = sum(_kind_of(f) == "parquet" for f in files)
            n_js = sum(_kind_of(f) == "jsonl" for f in files)
            raise InputError(ii, f"folder '{inp.path}' holds both Parquet ({n_pq} files) and JSONL ({n_js} files)",
                             f"give one format per input: '{inp.path.rstrip('/')}/**/*.parquet' and "
                             f"'{inp.path.rstrip('/')}/**/*.jsonl' as two inputs, or set 'format:'")
        paths = expand_paths(inp, fmt, notes)
        for path in paths:
            if fmt != "hf":
                try:
                    check_input_file(path, fmt)
                except ValueError as e:
                    raise InputError(ii, *e.args) from None
            rp = path if storage.is_remote(path) else os.path.realpath(path)
            if rp in owner:
                k, given = owner[rp]
                raise InputError(ii, f"'{path}' is already read by inputs[{k}] ('{given}'); "
                                 "reading it twice would duplicate (and then dedup away) its records",
                                 "give each file once")
            owner[rp] = (ii, inp.path)
        if fmt == "jsonl":
            for path in paths:
                size = storage.file_size(path)
                if path.endswith((".gz", ".zst")) or size <= target:
                    shards.append(Shard(len(shards), ii, fmt, (path,), 0, size))
                    continue
                for start in range(0, size, target):
                    shards.append(Shard(len(shards), ii, fmt, (path,), start, min(size, start + target)))
                    if len(shards) > MAX_SHARDS:
                        break
        elif fmt == "parquet":
            for path in paths:
                meta = _parquet_meta(path, ii)
                groups, acc, first = [], 0, 0
                for rg in range(meta.num_row_groups):
                    acc += meta.row_group(rg).total_byte_size
                    if acc >= target:
                        groups.append((first, rg + 1))
                        first, acc = rg + 1, 0
                if first < meta.num_row_groups or not groups:
                    groups.append((first, meta.num_row_groups))
                for a, b in groups:
                    shards.append(Shard(len(shards), ii, fmt, (path,), a, b))
        elif fmt == "text":
            batch, acc = [], 0
            for path in paths:
                batch.append(path)
                acc += storage.file_size(path)
                if acc >= target:
                    shards.append(Shard(len(shards), ii, fmt, tuple(batch), 0, len(batch)))
                    batch, acc = [], 0
            if batch:
                shards.append(Shard(len(shards), ii, fmt, tuple(batch), 0, len(batch)))
        elif fmt == "hf":
            arrow_files = sorted(glob.glob(os.path.join(paths[0], "**", "*.arrow"), recursive=True))
            if not arrow_files:
                raise FileNotFoundError(f"'{paths[0]}' holds no .arrow files of a saved HF dataset")
            for path in arrow_files:
                shards.append(Shard(len(shards), ii, fmt, (path,), 0, -1))
        else:  # pragma: no cover - guarded by the spec model
            raise ValueError(f"unknown format {fmt}")
        if len(shards) > MAX_SHARDS:
            raise InputError(ii, f"read.shard_mb = {read.shard_mb} cuts the inputs into more than "
                             f"{MAX_SHARDS:,} shards (each leaves work files)",
                             "raise read.shard_mb (the default is 64)")
    return shards


def estimate_records(shard: Shard) -> int:
    """Records in a shard: exact for Parquet and text folders, from the first MiB's lines for JSONL."""
    if shard.format == "parquet":
        meta = pq.ParquetFile(shard.paths[0]).metadata
        return sum(meta.row_group(i).num_rows for i in range(shard.start, shard.end))
    if shard.format == "text":
        return len(shard.paths)
    if shard.format == "hf":
        with pa.memory_map(shard.paths[0]) as source:
            try:
                return pa.ipc.open_stream(source).read_all().num_rows
            except pa.ArrowInvalid:
                return pa.ipc.open_file(source).read_all().num_rows
    try:
        with _open_binary(shard.paths[0]) as f:
            head = f.read(MB)
    except (EOFError, OSError, ValueError):
        return 0  # damaged: the read rejects it with its reason
    lines = max(1, head.count(b"\n"))
    if shard.paths[0].endswith((".gz", ".zst")):
        ratio = 4  # a typical compression ratio for text; an estimate, said to be one
        return int(os.path.getsize(shard.paths[0]) * ratio / max(1, len(head)) * lines)
    return int((shard.end - shard.start) / max(1, len(head)) * lines)


def _open_binary(path: str):
    if path.endswith(".gz"):
        return gzip.GzipFile(fileobj=storage.open_binary(path), mode="rb")
    if path.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(storage.open_binary(path), closefd=True)
    return storage.open_binary(path)
