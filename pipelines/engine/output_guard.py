"""What a run may write into: a new or empty folder, or one longforge wrote (its own earlier or
interrupted run, or with ``--overwrite`` a finished run of another spec); and one run per output
folder at a time (a kernel lock that dies with its process)."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from catalog import Catalog
from pipelines import storage
from pipelines.engine.steps import Plan


class OutputFolderError(ValueError):
    """The output folder holds what this run did not create (a user's files, another dataset)."""

    def __init__(self, message: str, fix: str):
        self.fix = fix
        super().__init__(f"{message} -> {fix}")


def check_output_folder(output_dir: str, spec_fingerprint: str, overwrite: bool = False) -> None:
    """A run writes only into a new or empty folder, or one that longforge wrote: its own earlier
    or interrupted run (resume), or, with ``overwrite``, a finished run of another spec. A remote
    folder (``s3://...``) is checked where it lies."""
    if storage.is_remote(output_dir):
        remote = storage.Mirror(output_dir)
        listing = remote.listing()
        if not listing and storage.remote_exists(output_dir) and not storage.remote_isdir(output_dir):
            raise OutputFolderError(f"output '{output_dir}' is a file", "give a folder for the output")
        entries = sorted({rel.split("/", 1)[0] for rel in listing})
        ours = ".longforge" in entries
        run_record = remote.read_text(".longforge/run.json") if ours else None
    else:
        out = Path(output_dir)
        if not out.exists():
            return
        if not out.is_dir():
            raise OutputFolderError(f"output '{output_dir}' is a file", "give a folder for the output")
        entries = sorted(e.name for e in out.iterdir())
        ours = (out / ".longforge").is_dir()
        record = out / ".longforge" / "run.json"
        run_record = record.read_text(encoding="utf-8") if ours and record.is_file() else None
    if not entries:
        return
    if not ours:
        shown = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
        raise OutputFolderError(f"output '{output_dir}' already holds files that longforge did not write ({shown}); "
                                "a run would replace or delete some of them",
                                "give --output a new or empty folder")
    try:
        previous = json.loads(run_record or "")
    except ValueError:
        return  # an interrupted run of ours: resume
    if previous.get("spec_fingerprint") != spec_fingerprint and not overwrite:
        raise OutputFolderError(
            f"output '{output_dir}' holds the finished dataset of run {previous.get('run_id')} (pipeline "
            f"'{previous.get('pipeline')}', {previous.get('records')} records) built from another spec or input; "
            "this run would replace it",
            "give --output another folder, or pass --overwrite to replace that dataset")


def take_output_lock(plan: Plan, catalog: Catalog) -> int:
    """One run per output folder, by a kernel lock (flock) that dies with its process, so two runs
    can never both take it. A lock file that still names a pid was left by a run that died: the
    runs it left 'running' are marked 'interrupted', and this run resumes their shards."""
    lock = Path(plan.output_dir) / ".longforge" / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RuntimeError(f"another run (pid {holder}) is writing to {plan.output_dir}; "
                           "wait for it or stop it") from None
    left = os.read(fd, 64).strip()
    if left:
        catalog.mark_interrupted(storage.public_path(plan.output_dir))
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def release_lock(fd: int, mirror: storage.Mirror | None = None) -> None:
    """An emptied lock file means the last run ended on its own; the kernel lock goes with close."""
    try:
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)
        if mirror is not None:
            mirror.release_lock()
