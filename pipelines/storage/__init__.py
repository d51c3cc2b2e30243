"""Remote storage (``s3://``, ``gs://``, ``hf://``, ``memory://``, any fsspec protocol).

Inputs are read through fsspec where they lie. A remote output folder is worked in a local staging
folder that mirrors it: the run pulls what an earlier run left there (its markers and work files,
so a run resumes from the remote store even on a fresh machine), pushes each step's files as soon as
the step is finished, and at the end pushes the published files, then ``.longforge/run.json``.

Object stores have no rename. The stated equivalent of our write-then-rename: each file is written
whole to its final key in one upload, which a store shows all at once or not at all, and a step's
completion markers are uploaded only after every file they vouch for, the finished run's
``run.json`` only after every published file. A reader of the remote folder thus never takes half
a step for a finished one, as on a local disk.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import socket
from pathlib import Path

from catalog import pid_alive

#: Where remote outputs are staged; one folder per remote URL.
STAGING_ENV = "LONGFORGE_STAGING"
_LOCAL_PROTOCOLS = ("file", "local")
#: Staging entries that are not the run's files: the local lock, DuckDB's spill, half-written files.
_NOT_PUSHED = re.compile(r"(^|/)(lock|duckdb-tmp(/.*)?)$|\.tmp-\d+$")
_MARKER = re.compile(r"(^|/)(shard-\d+\.)?done\.json$")
_RUN_RECORD = ".longforge/run.json"
REMOTE_LOCK = ".longforge/lock.json"

_public: dict[str, str] = {}  # staging folder -> the remote URL it mirrors


#: Stores that live in the process that made them: a command's output there is gone when it exits.
EPHEMERAL_PROTOCOLS = ("memory",)


def is_ephemeral(path: str | os.PathLike) -> bool:
    """A store that ends with the process, anywhere in an fsspec chain (``simplecache::memory://x``)."""
    s = str(path)
    return any("://" in link and link.split("://", 1)[0] in EPHEMERAL_PROTOCOLS for link in s.split("::")) \
        or any(link in EPHEMERAL_PROTOCOLS for link in s.split("::")[:-1])


def local_path(value: str) -> str:
    """A ``file://`` (or ``local://``) URL as the local path it names (``file:///abs/x`` and
    ``file://localhost/abs/x``, percent-escapes decoded); any other value unchanged. A URL naming
    another host is refused: this process cannot reach that host's disk."""
    from urllib.parse import unquote, urlsplit

    s = str(value)
    if "://" not in s or s.split("://", 1)[0].lower() not in _LOCAL_PROTOCOLS:
        return s
    parts = urlsplit(s)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"'{s}' names a file on host '{parts.netloc}'; a file:// URL must be file:///absolute/path")
    if parts.query or parts.fragment:
        raise ValueError(f"'{s}': a file:// URL takes no '?' or '#' part")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise ValueError(f"'{s}': a file:// URL must be file:///absolute/path")
    return path


def is_remote(path: str | os.PathLike) -> bool:
    s = str(path)
    return "://" in s and s.split("://", 1)[0] not in _LOCAL_PROTOCOLS


def filesystem(url: str):
    """(fsspec filesystem, path within it) of a URL."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        raise RuntimeError(f"'{url}': {e}; install the filesystem's package (pip install s3fs / gcsfs)") from None


def open_binary(path: str):
    """A local file or a remote object, opened for reading bytes (seekable)."""
    if not is_remote(path):
        return open(path, "rb")
    fs, p = filesystem(path)
    # Buffered as a local file is: fsspec's files lack ``readline(limit)``, which the JSONL reader needs.
    return io.BufferedReader(fs.open(p, "rb"), buffer_size=1 << 20)


def file_size(path: str) -> int:
    if not is_remote(path):
        return os.path.getsize(path)
    fs, p = filesystem(path)
    return int(fs.size(p))


def identity(path: str) -> tuple[int, str]:
    """A remote object's size and version (ETag, generation or modification time): a changed
    object changes the steps' fingerprints, as a changed local file's mtime does."""
    fs, p = filesystem(path)
    info = fs.info(p)
    version = next((str(info[k]) for k in ("ETag", "etag", "generation", "mtime", "LastModified", "created")
                    if info.get(k) is not None), "")
    return int(info.get("size") or 0), version


def _url(fs, path: str) -> str:
    return fs.unstrip_protocol(path)


def remote_isdir(url: str) -> bool:
    fs, p = filesystem(url)
    return fs.isdir(p)


def remote_exists(url: str) -> bool:
    fs, p = filesystem(url)
    return fs.exists(p)


def remote_files(url: str) -> list[str]:
    """Visible files under a remote folder, as URLs, sorted; names starting with '.' left out."""
    fs, root = filesystem(url)
    root = root.rstrip("/")
    found = fs.find(root)
    rel = [f[len(root) + 1:] for f in found if f.startswith(root + "/")]
    return sorted(_url(fs, f"{root}/{r}") for r in rel if not any(part.startswith(".") for part in r.split("/")))


def remote_glob(pattern: str) -> list[str]:
    """A remote glob's files, hidden ones left out as a local glob leaves them out: no path part
    starting with '.' that the pattern does not name (an output's .longforge/ work files and rejects
    are never read back as input)."""
    fs, p = filesystem(pattern)
    named = {part for part in p.split("/") if part.startswith(".")}
    return sorted(_url(fs, f) for f in fs.glob(p) if fs.isfile(f)
                  and not any(part.startswith(".") and part not in named for part in f.split("/")))


def public_path(path: str | os.PathLike) -> str:
    """What the catalog records for ``path``: the remote URL where it is a staged copy of one, with
    any ``user:password@`` of a URL hidden."""
    from pipelines.storage.redaction import redact_text

    s = os.path.abspath(str(path)) if not is_remote(path) else str(path)
    for staging, url in _public.items():
        if s == staging or s.startswith(staging + os.sep):
            return redact_text(url + s[len(staging):].replace(os.sep, "/"))
    return redact_text(s) if is_remote(s) else s


def staging_dir(url: str) -> Path:
    base = Path(os.environ.get(STAGING_ENV) or Path.home() / ".cache" / "longforge" / "staging")
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", url)[:80]
    return base / f"{readable}-{hashlib.sha1(url.encode()).hexdigest()[:12]}"


class RemoteLockError(RuntimeError):
    pass


class Mirror:
    """A remote output folder and its local staging copy."""

    def __init__(self, url: str, staging: Path | None = None):
        self.url = url.rstrip("/")
        self.fs, root = filesystem(self.url)
        self.root = root.rstrip("/")
        self.staging = Path(staging or staging_dir(self.url)).absolute()
        self._known: dict[str, tuple[int, int]] = {}  # staged file -> (size, mtime) as last pulled or pushed
        self._listed: set[str] | None = None  # the remote's files outside .longforge when first pulled
        _public[str(self.staging)] = self.url

    def _key(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def listing(self, under: str = "") -> dict[str, int]:
        """Remote files (relative path -> size) under ``under``."""
        base = self._key(under).rstrip("/") if under else self.root
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        out = {}
        for key, info in found.items():
            if info.get("type") == "file" and key.startswith(self.root + "/"):
                out[key[len(self.root) + 1:]] = int(info.get("size") or 0)
        return out

    def read_text(self, rel: str) -> str | None:
        try:
            return self.fs.cat_file(self._key(rel)).decode("utf-8")
        except FileNotFoundError:
            return None

    def pull(self, everything: bool = False, skip: re.Pattern | None = None) -> int:
        """Fetch the remote files that staging lacks: the ``.longforge`` folder (what an earlier run,
        perhaps on another machine, finished), or ``everything`` but what ``skip`` matches. Returns
        how many. Staged files are kept: the same step fingerprint gives the same bytes wherever it
        ran. The first call also notes the remote's other files, so that the final push can remove
        those an earlier run published and this one did not."""
        listing = self.listing() if everything or self._listed is None else self.listing(".longforge")
        if self._listed is None:
            self._listed = {rel for rel in listing if not rel.startswith(".longforge/")}
        n = 0
        for rel in sorted(listing):
            if rel == REMOTE_LOCK or _NOT_PUSHED.search(rel) or (skip is not None and skip.search(rel)):
                continue
            if not everything and not rel.startswith(".longforge/"):
                continue
            n += self._get(rel)
        return n

    def fetch(self, files: list[str], folders: list[str] = ()) -> int:
        """Fetch the named files and every file under the named folders (relative paths) that
        staging lacks; names the remote does not have are left out (a task's reader then says so)."""
        wanted = list(files)
        for folder in folders:
            wanted += [rel for rel in self.listing(folder) if rel.startswith(folder.rstrip("/") + "/")]
        n = 0
        for rel in wanted:
            try:
                n += self._get(rel)
            except FileNotFoundError:
                continue
        return n

    def _get(self, rel: str) -> int:
        local = self.staging / rel
        fetched = 0
        if not local.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f"{local.name}.tmp-{os.getpid()}")
            self.fs.get_file(self._key(rel), str(tmp))
            os.replace(tmp, local)
            fetched = 1
        st = local.stat()
        self._known[rel] = (st.st_size, st.st_mtime_ns)
        return fetched

    def _staged(self) -> dict[str, tuple[int, int]]:
        out = {}
        if not self.staging.is_dir():
            return out
        for p in self.staging.rglob("*"):
            rel = p.relative_to(self.staging).as_posix()
            if p.is_file() and not _NOT_PUSHED.search(rel):
                st = p.stat()
                out[rel] = (st.st_size, st.st_mtime_ns)
        return out

    def push(self, final: bool = False) -> dict[str, int]:
        """Upload the staged files that changed since the last pull or push: the run's files first,
        then the completion markers, and (``final``) the run record last, once the remote copies of
        files the run removed (stale outputs and work) are deleted."""
        staged = self._staged()
        changed = [rel for rel, st in staged.items() if self._known.get(rel) != st]
        last = [_RUN_RECORD] if final and _RUN_RECORD in changed else []
        markers = sorted(r for r in changed if _MARKER.search(r) and r not in last)
        files = sorted(r for r in changed if r not in markers and r not in last)
        for rel in files + markers:
            self._upload(rel, staged[rel])
        deleted = 0
        if final:
            # What this process fetched or pushed and then removed (stale work), and what an earlier
            # run published that this one did not: never a file some other process wrote.
            seen = set(self._known) | (self._listed or set())
            gone = [rel for rel in self.listing() if rel in seen and rel not in staged and rel != REMOTE_LOCK
                    and not _NOT_PUSHED.search(rel)]
            for rel in sorted(gone, key=lambda r: not _MARKER.search(r)):  # markers first: never vouch for a gap
                self.fs.rm_file(self._key(rel))
                deleted += 1
            for rel in last:
                self._upload(rel, staged[rel])
        return {"uploaded": len(files) + len(markers) + len(last), "deleted": deleted}

    def _upload(self, rel: str, stat: tuple[int, int]) -> None:
        parent = self._key(rel).rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        self.fs.put_file(str(self.staging / rel), self._key(rel))
        self._known[rel] = stat

    # -- one run at a time ---------------------------------------------------------------------------

    def take_lock(self, run_id: str) -> None:
        """A lock object naming the run, host and pid. The local lock (a kernel lock on the staging
        folder) stops a second run on this machine; this one stops a run on another machine while
        the first is alive. A lock left by a dead process of this host is taken over."""
        import json

        me = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid()}
        held = self.read_text(REMOTE_LOCK)
        if held:
            try:
                other = json.loads(held)
            except ValueError:
                other = {}
            if other.get("host") != me["host"]:
                raise RemoteLockError(
                    f"run {other.get('run_id')} on host {other.get('host')} holds {self.url} "
                    f"({REMOTE_LOCK}) -> wait for it; if that run is gone, delete {self.url}/{REMOTE_LOCK}")
            pid = other.get("pid")
            if pid != me["pid"] and isinstance(pid, int) and pid_alive(pid):
                raise RemoteLockError(f"another run (pid {other.get('pid')}) is writing to {self.url}; "
                                      "wait for it or stop it")
        self.fs.makedirs(self._key(".longforge"), exist_ok=True)
        self.fs.pipe_file(self._key(REMOTE_LOCK), json.dumps(me).encode())

    def release_lock(self) -> None:
        try:
            self.fs.rm_file(self._key(REMOTE_LOCK))
        except FileNotFoundError:
            pass

