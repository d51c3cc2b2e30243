"""The DuckDB catalog: runs, artifacts, stage statistics, rejects, scores and lineage.

One embedded file, written only by the driver process. Connections are short-lived so that a
user can query the catalog while nothing is running, and scores live in a side table keyed by
stable sample ids, so re-thresholding a selection is a query rather than a rerun.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from catalog.accounting import LEGACY_EXPANDING_SHAPES, reconciles
from catalog.ddl import DDL
from catalog.queries import (  # noqa: F401 - QUERY_CONFIG, SANDBOX, QueryRefused: the catalog's API
    QUERY_CONFIG,
    SANDBOX,
    CatalogReads,
    QueryRefused,
    is_lock_conflict,
    wait_seconds,
)
from catalog.scores import score_rows

DEFAULT_PATH = "longforge.duckdb"
SCHEMA_VERSION = 2  # 2: stage_stats.reconciles (the accounting rule's answer, stored)



class CatalogUnusable(RuntimeError):
    """A catalog this longforge cannot use: written by a newer one (a higher schema version: this
    one would misread it, and a write would stamp it with the older version), or not a DuckDB
    catalog at all (empty, damaged, another file)."""


class CatalogUnavailable(RuntimeError):
    """The catalog could not be written (held by another process past the wait, disk full)."""


def catalog_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get("LONGFORGE_CATALOG") or DEFAULT_PATH


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Catalog(CatalogReads):
    """A handle on the catalog file; every method opens and closes its own connection."""

    def __init__(self, path: str | None = None):
        self.path = catalog_path(path)

    @property
    def pending_path(self) -> Path:
        """Final run states that could not be written when the run ended; applied on the next write."""
        return Path(f"{self.path}.pending.jsonl")

    def _open(self, read_only: bool, config: dict | None = None):
        """A connection; another process holding the file (a reader mid-run, another run) is waited
        for, up to LONGFORGE_CATALOG_WAIT seconds, rather than failing the run."""
        deadline = time.monotonic() + wait_seconds()
        delay = 0.05
        while True:
            try:
                return duckdb.connect(self.path, read_only=read_only, config=config or {})
            except duckdb.Error as e:
                if not is_lock_conflict(e):
                    raise CatalogUnusable(f"the catalog {self.path} cannot be opened ({type(e).__name__}: "
                                        f"{' '.join(str(e).split())[:300]}) -> give --catalog another file, or "
                                        "move this one away") from None
                if time.monotonic() >= deadline:
                    raise
                time.sleep(delay)
                delay = min(1.0, delay * 2)

    @contextmanager
    def connect(self, read_only: bool = False, config: dict | None = None):
        if read_only and not Path(self.path).exists():
            raise FileNotFoundError(f"no catalog at {self.path} (run a pipeline first, or pass --catalog)")
        if not read_only:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        con = self._open(read_only, config)
        try:
            self._check_schema_version(con)
            if not read_only:
                con.execute(DDL)
                _fill_in_reconciles(con)
                con.execute(
                    "INSERT OR REPLACE INTO catalog_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)]
                )
                self._apply_pending(con)
            yield con
        finally:
            con.close()

    def check_version(self) -> None:
        """Raise CatalogUnusable if the catalog exists with a schema version this longforge cannot
        read or write (a run checks before it starts working)."""
        if Path(self.path).exists():
            with self.connect(read_only=True):
                pass

    def _check_schema_version(self, con) -> None:
        has_meta = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'catalog_meta' "
                               "AND table_schema = 'main'").fetchone()[0]
        row = con.execute("SELECT value FROM catalog_meta WHERE key = 'schema_version'").fetchone() if has_meta \
            else None
        if row is None:
            return
        try:
            version = int(row[0])
        except ValueError:
            version = -1
        if version > SCHEMA_VERSION or version < 1:
            raise CatalogUnusable(
                f"the catalog {self.path} has schema version {row[0]!r}; this longforge reads version "
                f"{SCHEMA_VERSION} -> use the longforge that wrote it, or give --catalog another file")

    def _apply_pending(self, con) -> None:
        """Final run states journalled when the catalog could not be written. A line cut short
        (the disk filled while it was written) is skipped with a warning: the run it named stays
        'running' until the next run on this host finds its process gone and marks it."""
        import sys

        pending = self.pending_path
        if not pending.exists():
            return
        with open(pending, "rb") as f:
            raw = f.read(64 << 20)  # a journal line is ~300 bytes; nothing real comes near this
        for n, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                e = json.loads(line)
                values = [e["status"], e["error"], datetime.fromisoformat(e["at"]), e["run_id"]]
                if e["status"] not in ("succeeded", "failed", "interrupted"):
                    raise ValueError(f"status {e['status']!r}")
            except (ValueError, KeyError, TypeError) as err:
                print(f"warning: {pending} line {n} is damaged ({type(err).__name__}: {err}); skipped",
                      file=sys.stderr)
                continue
            con.execute("UPDATE runs SET status = ?, error = ?, finished_at = ? WHERE run_id = ? AND status = "
                        "'running'", values)
        pending.unlink()

    # -- writes (driver only) ----------------------------------------------------------------------

    def start_run(self, run_id: str, *, pipeline: str, pipeline_file: str, runner: str, workers: int,
                  spec_fingerprint: str, seed: int, params: dict, code_version: str, output_path: str) -> None:
        with self.connect() as con:
            self._sweep_dead_runs(con)
            con.execute(
                "INSERT INTO runs (run_id, pipeline, pipeline_file, status, runner, workers, spec_fingerprint, seed, "
                "params, code_version, output_path, error, started_at, finished_at, pid, host) "
                "VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, NULL, ?, NULL, ?, ?)",
                [run_id, pipeline, pipeline_file, runner, workers, spec_fingerprint, seed,
                 json.dumps(params, sort_keys=True), code_version, output_path, now(), os.getpid(),
                 socket.gethostname()],
            )

    @staticmethod
    def _sweep_dead_runs(con) -> None:
        """Runs of this host still 'running' whose driver process is gone (SIGKILL, power loss)."""
        host = socket.gethostname()
        rows = con.execute("SELECT run_id, pid FROM runs WHERE status = 'running' AND host = ? AND pid IS NOT NULL",
                           [host]).fetchall()
        for run_id, pid in rows:
            if not pid_alive(pid):
                con.execute("UPDATE runs SET status = 'interrupted', finished_at = ?, error = coalesce(error, "
                            "'the driver process ended without recording a result') WHERE run_id = ?", [now(), run_id])

    def finish_run(self, run_id: str, status: str, error: str | None = None) -> None:
        """Leave the run's row final. If the catalog cannot be written now, the state goes to a
        journal beside it (applied by the next process that writes the catalog) and this raises."""
        try:
            with self.connect() as con:
                con.execute(
                    "UPDATE runs SET status = ?, error = ?, finished_at = ? WHERE run_id = ?",
                    [status, error, now(), run_id],
                )
        except (duckdb.Error, OSError) as e:
            entry = {"run_id": run_id, "status": status, "error": error, "at": now().isoformat()}
            try:
                with open(self.pending_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(entry) + "\n")
            except OSError as e2:
                raise CatalogUnavailable(f"run {run_id} ended '{status}' but neither the catalog {self.path} "
                                         f"({e}) nor its journal ({e2}) could be written") from e
            raise CatalogUnavailable(f"run {run_id} ended '{status}'; the catalog {self.path} could not be written "
                                     f"({type(e).__name__}: {str(e)[:300]}), so the state waits in "
                                     f"{self.pending_path} and is applied when the catalog is next written") from e

    def mark_interrupted(self, output_path: str) -> None:
        """Runs that were killed before they could say so (their lock outlived them)."""
        with self.connect() as con:
            con.execute(
                "UPDATE runs SET status = 'interrupted', finished_at = ? "
                "WHERE status = 'running' AND output_path = ?",
                [now(), output_path],
            )

    def record_results(self, run_id: str, *, stage_stats: list[dict], rejects: pa.Table | str | None,
                       artifacts: list[dict], lineage: list[tuple[str, str]],
                       metrics: dict[str, dict] | None = None) -> None:
        """Everything a finished run produced, in one transaction."""
        with self.connect() as con:
            con.execute("BEGIN")
            for s in stage_stats:
                con.execute(
                    "INSERT INTO stage_stats (run_id, step, stage, shape, records_in, records_out, "
                    "records_rejected, records_dropped, inputs_with_output, seconds, reconciles) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [run_id, s["step"], s["stage"], s["shape"], s["in"], s["out"], s["rejected"],
                     s["dropped"], s["inputs_with_output"], s["seconds"],
                     s["reconciles"] if "reconciles" in s else reconciles(s)],
                )
            if isinstance(rejects, str):  # a Parquet file: DuckDB streams it, nobody holds it whole
                con.execute("INSERT INTO rejects SELECT ?, stage, record_id, reason, detail, kind FROM read_parquet(?)",
                            [run_id, rejects])
            elif rejects is not None and rejects.num_rows:
                con.register("_rejects", rejects)
                con.execute(
                    "INSERT INTO rejects SELECT ?, stage, record_id, reason, detail, kind FROM _rejects",
                    [run_id],
                )
                con.unregister("_rejects")
            for a in artifacts:
                con.execute(
                    "INSERT INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [a["artifact_id"], run_id, a["name"], a["kind"], a["path"], a["n_records"],
                     a.get("n_bytes"), a["fingerprint"], a.get("schema_name"), a.get("schema_version"),
                     now()],
                )
            for parent, child in lineage:
                con.execute("INSERT INTO lineage VALUES (?, ?, ?)", [parent, child, run_id])
            for stage, values in (metrics or {}).items():
                for name, value in sorted(values.items()):
                    con.execute("INSERT INTO metrics VALUES (?, ?, ?, ?)", [run_id, stage, name, float(value)])
            con.execute("COMMIT")

    def record_push(self, *, artifact_id: str, run_id: str, repo: str, revision: str, commit: str,
                    configs: list[str], files: int, n_bytes: int, private: bool, endpoint: str,
                    pushed_at: datetime) -> None:
        with self.connect() as con:
            con.execute("INSERT INTO pushes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [artifact_id, run_id, repo, revision, commit, json.dumps(configs), files, n_bytes, private,
                         endpoint, pushed_at])

    def add_score_rows(self, per_row: pa.Table | dict, **same: str | None) -> int:
        """Append scores built by the one builder (:func:`catalog.scores.score_rows`): per-row
        columns, and the values every row shares (``run_id=...``, ``model=...``)."""
        return self.add_scores(score_rows(per_row, **same))

    def add_scores(self, table: pa.Table) -> int:
        """Append scores (columns as in the ``scores`` table); returns the number of rows."""
        with self.connect() as con:
            con.register("_scores", table)
            cols = ", ".join(table.column_names)
            con.execute(f"INSERT INTO scores ({cols}) SELECT {cols} FROM _scores")
            con.unregister("_scores")
        return table.num_rows

    def cached_generation(self, model: str, prompt_hash: str, params_hash: str) -> tuple[str, str] | None:
        """(text, params JSON with how the generation ended) of a cached generation, or None."""
        if not Path(self.path).exists():
            return None
        with self.connect() as con:
            row = con.execute("SELECT text, CAST(params AS VARCHAR) FROM generations WHERE model = ? "
                              "AND prompt_hash = ? AND params_hash = ? LIMIT 1",
                              [model, prompt_hash, params_hash]).fetchone()
        return (row[0], row[1]) if row else None

    def add_generation(self, model: str, prompt_hash: str, params_hash: str, *, backend: str, params: str,
                       text: str) -> None:
        with self.connect() as con:
            con.execute("INSERT INTO generations VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [model, prompt_hash, params_hash, backend, params, text, now()])

    def generations(self, models: list[str]) -> list[dict]:
        """The cached generations of these models, for a run's worker-side cache."""
        if not Path(self.path).exists() or not models:
            return []
        with self.connect() as con:
            rows = con.execute("SELECT model, prompt_hash, params_hash, backend, CAST(params AS VARCHAR), text "
                               "FROM generations WHERE list_contains(?, model) "
                               "ORDER BY model, prompt_hash, params_hash", [models]).fetchall()
        keys = ("model", "prompt_hash", "params_hash", "backend", "params", "text")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def import_generations(self, rows: list[dict]) -> int:
        """Add the generations a run's workers made that the catalog does not hold yet; returns how many."""
        if not rows:
            return 0
        table = pa.table({k: [r[k] for r in rows] for k in ("model", "prompt_hash", "params_hash", "backend",
                                                               "params", "text")})
        with self.connect() as con:
            con.register("_gens", table)
            n = con.execute("""INSERT INTO generations
                SELECT DISTINCT ON (g.model, g.prompt_hash, g.params_hash) g.model, g.prompt_hash, g.params_hash,
                       g.backend, g.params, g.text, ? FROM _gens g
                ANTI JOIN generations c ON c.model = g.model AND c.prompt_hash = g.prompt_hash
                                        AND c.params_hash = g.params_hash""", [now()]).fetchone()
            con.unregister("_gens")
        return int(n[0]) if n else 0

    def scored_keys(self, job: str, model: str, revision: str, settings_hash: str) -> set[tuple[str, str]]:
        """(sample id, content hash) of the samples already scored by this job, model, revision and
        settings (resume). A record whose scored fields changed has another hash and is scored again;
        rows written before content hashes were kept have none and are never reused."""
        if not Path(self.path).exists():
            return set()
        with self.connect() as con:
            rows = con.execute(
                "SELECT DISTINCT sample_id, content_hash FROM scores WHERE job = ? AND model = ? AND revision = ? "
                "AND json_extract_string(settings, '$.hash') = ? AND content_hash IS NOT NULL",
                [job, model, revision, settings_hash],
            ).fetchall()
        return {(r[0], r[1]) for r in rows}

    def find_artifact(self, name_or_id: str) -> tuple[str, str]:
        """(artifact_id, path) of an artifact given by id, or by name (the newest of that name)."""
        with self.connect() as con:
            row = con.execute(
                "SELECT artifact_id, path FROM artifacts WHERE artifact_id = ? OR name = ? "
                "ORDER BY (artifact_id = ?) DESC, created_at DESC LIMIT 1", [name_or_id, name_or_id, name_or_id],
            ).fetchone()
        if row is None:
            raise KeyError(f"no artifact named or with id '{name_or_id}' in {self.path} "
                           "(`longforge catalog query \"SELECT artifact_id, name, path FROM artifacts\"` lists them)")
        return row[0], row[1]

    def latest_output_artifact(self, path: str) -> str | None:
        """The newest output artifact written at ``path``, for lineage between pipelines."""
        if not Path(self.path).exists():
            return None
        with self.connect(read_only=True) as con:
            row = con.execute(
                "SELECT artifact_id FROM artifacts WHERE kind = 'output' AND path = ? "
                "ORDER BY created_at DESC LIMIT 1",
                [path],
            ).fetchone()
        return row[0] if row else None


def _fill_in_reconciles(con) -> None:
    """Rows an older longforge recorded (schema version 1) get the rule's answer, read off their
    shape: they carry no ``expands`` flag."""
    rows = con.execute("SELECT rowid, shape, records_in, records_out, records_rejected, records_dropped, "
                       "inputs_with_output FROM stage_stats WHERE reconciles IS NULL").fetchall()
    for rowid, shape, n_in, n_out, rejected, dropped, with_output in rows:
        ok = reconciles({"in": n_in, "out": n_out, "rejected": rejected, "dropped": dropped,
                         "inputs_with_output": with_output, "expands": shape in LEGACY_EXPANDING_SHAPES})
        con.execute("UPDATE stage_stats SET reconciles = ? WHERE rowid = ?", [ok, rowid])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
