"""Reading the catalog with a user's SQL: one SELECT on a connection that can open no file but the
catalog, or, with the artifacts' files readable, in a child process the kernel forbids to write
(catalog/no_writes.py)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import duckdb

#: Settings of the connection behind `longforge catalog query`: one SELECT over this catalog and the
#: files of its artifacts; nothing else is read (read_text('/etc/...')), nothing is written (COPY,
#: ATTACH), no extension is installed or loaded, and the query cannot change these settings back.
QUERY_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
#: Applied after the readable folders are set (DuckDB takes those only while access is open).
SANDBOX = {"enable_external_access": "false", "lock_configuration": "true"}


class QueryRefused(ValueError):
    """A catalog query that would do more than read."""


def wait_seconds() -> float:
    """How long a writer waits for another process to let go of the catalog file."""
    try:
        return max(0.0, float(os.environ.get("LONGFORGE_CATALOG_WAIT", "60")))
    except ValueError:
        return 60.0


def is_lock_conflict(e: Exception) -> bool:
    return "lock" in str(e).lower() and ("conflict" in str(e).lower() or "could not set" in str(e).lower())



class CatalogReads:
    """The query methods of :class:`catalog.Catalog` (which holds ``path``, ``pending_path`` and
    ``connect``)."""

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
        deadline = time.monotonic() + wait_seconds()
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
            if not is_lock_conflict(Exception(message)) or time.monotonic() >= deadline:
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
