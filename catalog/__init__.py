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
from collections.abc import Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa

DEFAULT_PATH = "longforge.duckdb"
SCHEMA_VERSION = 1

DDL = """
CREATE TABLE IF NOT EXISTS catalog_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    pipeline VARCHAR,
    pipeline_file VARCHAR,
    status VARCHAR,            -- running | succeeded | failed | interrupted
    runner VARCHAR,
    workers INTEGER,
    spec_fingerprint VARCHAR,
    seed BIGINT,
    params JSON,               -- the resolved pipeline spec
    code_version VARCHAR,
    output_path VARCHAR,
    error VARCHAR,
    started_at TIMESTAMP,
    finished_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS artifacts (
    artifact_id VARCHAR PRIMARY KEY,
    run_id VARCHAR,
    name VARCHAR,
    kind VARCHAR,              -- input | output
    path VARCHAR,
    n_records BIGINT,
    n_bytes BIGINT,
    fingerprint VARCHAR,       -- hash of the records' content, independent of paths and times
    schema_name VARCHAR,
    schema_version INTEGER,
    created_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS stage_stats (
    run_id VARCHAR,
    step INTEGER,
    stage VARCHAR,
    shape VARCHAR,
    records_in BIGINT,
    records_out BIGINT,
    records_rejected BIGINT,
    records_dropped BIGINT,
    inputs_with_output BIGINT, -- for stages that may emit several records per input
    seconds DOUBLE
);
CREATE TABLE IF NOT EXISTS rejects (
    run_id VARCHAR,
    stage VARCHAR,
    record_id VARCHAR,
    reason VARCHAR,
    detail VARCHAR,
    kind VARCHAR               -- rejected (bad input) | dropped (by design)
);
CREATE TABLE IF NOT EXISTS lineage (
    parent_artifact_id VARCHAR,
    child_artifact_id VARCHAR,
    run_id VARCHAR
);
CREATE TABLE IF NOT EXISTS scores (
    sample_id VARCHAR,
    artifact_id VARCHAR,
    job VARCHAR,
    model VARCHAR,
    revision VARCHAR,
    metric VARCHAR,
    value DOUBLE,
    run_id VARCHAR,
    settings JSON
);

CREATE TABLE IF NOT EXISTS generations (
    model VARCHAR,
    prompt_hash VARCHAR,     -- sha256 of the messages (JSON, sorted keys)
    params_hash VARCHAR,
    backend VARCHAR,
    params JSON,
    text VARCHAR,
    created_at TIMESTAMP
);

CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR,
    stage VARCHAR,
    name VARCHAR,
    value DOUBLE
);

CREATE TABLE IF NOT EXISTS pushes (  -- artifacts published to a Hub dataset repo (no token, ever)
    artifact_id VARCHAR,
    run_id VARCHAR,
    repo VARCHAR,
    revision VARCHAR,
    commit_oid VARCHAR,
    configs JSON,
    files INTEGER,
    n_bytes BIGINT,
    private BOOLEAN,
    endpoint VARCHAR,
    pushed_at TIMESTAMP
);

ALTER TABLE runs ADD COLUMN IF NOT EXISTS pid INTEGER;      -- the driver process, to tell a dead run
ALTER TABLE runs ADD COLUMN IF NOT EXISTS host VARCHAR;
ALTER TABLE scores ADD COLUMN IF NOT EXISTS content_hash VARCHAR;  -- hash of the fields scored

CREATE OR REPLACE VIEW run_summary AS
SELECT r.run_id, r.pipeline, r.status, r.runner, r.started_at,
       round(epoch(r.finished_at) - epoch(r.started_at), 2) AS seconds,
       (SELECT records_in FROM stage_stats s WHERE s.run_id = r.run_id ORDER BY step, rowid LIMIT 1)
           AS records_read,
       (SELECT sum(records_rejected) FROM stage_stats s WHERE s.run_id = r.run_id) AS rejected,
       (SELECT sum(records_dropped) FROM stage_stats s WHERE s.run_id = r.run_id) AS dropped,
       (SELECT sum(n_records) FROM artifacts a WHERE a.run_id = r.run_id AND a.kind = 'output')
           AS records_out
FROM runs r;

CREATE OR REPLACE VIEW drops_by_reason AS
SELECT run_id, stage, kind, reason, count(*) AS n
FROM rejects GROUP BY ALL;

CREATE OR REPLACE VIEW artifact_producers AS
SELECT a.artifact_id, a.name, a.path, a.fingerprint, a.kind, r.run_id, r.pipeline, r.runner, r.status,
       r.started_at
FROM artifacts a JOIN runs r USING (run_id);

CREATE OR REPLACE VIEW stage_accounting AS
SELECT run_id, step, stage, records_in, records_out, records_rejected, records_dropped,
       CASE WHEN shape IN ('per-record-expanding', 'per-group', 'whole-dataset')  -- whole-dataset: older runs
            THEN records_in = inputs_with_output + records_rejected + records_dropped
            ELSE records_in = records_out + records_rejected + records_dropped END AS reconciles
FROM stage_stats;
"""


#: Settings of the connection behind `longforge catalog query`: one SELECT over this catalog and the
#: files of its artifacts; nothing else is read (read_text('/etc/...')), nothing is written (COPY,
#: ATTACH), no extension is installed or loaded, and the query cannot change these settings back.
QUERY_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
#: Applied after the readable folders are set (DuckDB takes those only while access is open).
SANDBOX = {"enable_external_access": "false", "lock_configuration": "true"}


class QueryRefused(ValueError):
    """A catalog query that would do more than read."""


class CatalogUnusable(RuntimeError):
    """A catalog this longforge cannot use: written by a newer one (a higher schema version: this
    one would misread it, and a write would stamp it with the older version), or not a DuckDB
    catalog at all (empty, damaged, another file)."""


class CatalogUnavailable(RuntimeError):
    """The catalog could not be written (held by another process past the wait, disk full)."""


def catalog_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get("LONGFORGE_CATALOG") or DEFAULT_PATH


def _wait_seconds() -> float:
    """How long a writer waits for another process to let go of the catalog file."""
    try:
        return max(0.0, float(os.environ.get("LONGFORGE_CATALOG_WAIT", "60")))
    except ValueError:
        return 60.0


def _is_lock_conflict(e: Exception) -> bool:
    return "lock" in str(e).lower() and ("conflict" in str(e).lower() or "could not set" in str(e).lower())


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Catalog:
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
        deadline = time.monotonic() + _wait_seconds()
        delay = 0.05
        while True:
            try:
                return duckdb.connect(self.path, read_only=read_only, config=config or {})
            except duckdb.Error as e:
                if not _is_lock_conflict(e):
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
                    "INSERT INTO stage_stats VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [run_id, s["step"], s["stage"], s["shape"], s["in"], s["out"], s["rejected"],
                     s["dropped"], s["inputs_with_output"], s["seconds"]],
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

    # -- reads ---------------------------------------------------------------------------------------

    def query(self, sql: str, params: Sequence | None = None, *, files: bool = False
              ) -> tuple[list[str], list[tuple]]:
        """One read-only SELECT over the catalog's tables, on a connection that can open no file
        but the catalog (``enable_external_access`` off, settings locked), so it writes nothing.

        ``files=True`` (`longforge catalog query`: a user's SQL) lets it read the files of the
        catalog's artifacts and runs too, to join scores with records. DuckDB's allowed folders
        are writable folders, so that query runs in a child process the kernel forbids to write any
        file (catalog/no_writes.py): a ``COPY ... TO`` into a dataset fails there, whatever the
        statement looks like. Where that cannot be had (not Linux), the query reads no file."""
        try:
            statements = duckdb.extract_statements(sql)
        except duckdb.Error as e:
            raise QueryRefused(f"query failed: {e}") from None
        kinds = [st.type.name for st in statements]
        if len(statements) != 1 or kinds[0] not in ("SELECT", "EXPLAIN"):
            # A clear answer for what is plainly not a read; the guard is the connection, not this.
            raise QueryRefused(
                f"only one SELECT statement is run here (got {', '.join(kinds) or 'nothing'}): "
                "the catalog query reads; COPY, ATTACH, INSTALL, SET and writes are refused -> "
                "to export, run the SELECT with --format csv or json and redirect it")
        if self.pending_path.exists():
            try:
                with self.connect():
                    pass  # applies the journal
            except duckdb.Error:
                pass  # still held: the rows show 'running' until the next write
        if files:
            answer = self._query_without_writes(sql, params)
            if answer is not None:
                return answer
        with self.connect(read_only=True, config=QUERY_CONFIG) as con:
            for key, value in SANDBOX.items():
                con.execute(f"SET {key} = {value}")
            cur = con.execute(sql, params or [])
            columns = [d[0] for d in cur.description] if cur.description else []
            return columns, cur.fetchall()

    def _query_without_writes(self, sql: str, params: Sequence | None) -> tuple[list[str], list[tuple]] | None:
        """The query in a child process that cannot write (catalog/sandboxed_query.py); None where
        this machine cannot forbid writes. DuckDB's refusals are raised as duckdb.Error."""
        import pickle
        import subprocess
        import sys

        with self.connect(read_only=True, config=QUERY_CONFIG) as con:
            readable = sorted(self._readable_paths(con))
        request = json.dumps({
            "catalog": self.path, "sql": sql, "params": list(params or []), "config": QUERY_CONFIG,
            "sandbox": SANDBOX, "dirs": [p for p in readable if p.endswith(os.sep)],
            "files": [p for p in readable if not p.endswith(os.sep)]})
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                          os.environ.get("PYTHONPATH")]))}
        deadline = time.monotonic() + _wait_seconds()
        delay = 0.05
        while True:
            # -P: nothing from the working directory is imported (a json.py there would run unfiltered)
            done = subprocess.run([sys.executable, "-P", "-m", "catalog.sandboxed_query"], input=request.encode(),
                                  capture_output=True, env=env, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"the sandboxed catalog query died: {done.stderr.decode(errors='replace')[-2000:]}")
            answer = pickle.loads(done.stdout)  # noqa: S301 - our own child's answer
            if answer[0] == "rows":
                return answer[1], answer[2]
            if answer[0] == "no-sandbox":
                return None
            message = answer[1]
            if "Operation not permitted" in message:
                raise QueryRefused(f"the catalog query writes no file ({message}) -> to export, run the SELECT "
                                   "with --format csv or json and redirect it")
            if not _is_lock_conflict(Exception(message)) or time.monotonic() >= deadline:
                raise duckdb.Error(message)
            time.sleep(delay)
            delay = min(1.0, delay * 2)

    @staticmethod
    def _readable_paths(con) -> set[str]:
        """Folders and files the catalog knows: artifacts (outputs and inputs) and run outputs."""
        rows = con.execute("SELECT path FROM artifacts UNION SELECT output_path FROM runs "
                           "UNION SELECT json_extract_string(params, '$.input') FROM runs").fetchall()
        out = set()
        for (p,) in rows:
            if p and os.path.exists(p):  # a relative input of `score` is relative to where it ran: best effort
                out.add(os.path.realpath(p) + (os.sep if os.path.isdir(p) else ""))
        return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
