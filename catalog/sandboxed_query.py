"""A user's catalog query, run in a child process that cannot write a file (catalog/no_writes.py).

The parent (:meth:`catalog.Catalog.query` with ``files=True``) sends the catalog's path, the SQL,
its parameters and the folders and files the query may read as JSON on the child's stdin; the child
forbids itself every write before it opens the catalog, runs the query on a read-only connection
whose external access is limited to those paths, and answers with one pickled tuple on stdout:
``("rows", columns, rows)``, ``("error", message)`` for a query DuckDB refused, or
``("no-sandbox", reason)`` where this machine cannot forbid writes.
"""

from __future__ import annotations

import json
import pickle
import sys


def run(request: dict) -> tuple:
    from catalog.no_writes import WritesNotForbidden, forbid_writes

    try:
        forbid_writes()  # before DuckDB starts a thread or opens a file
    except WritesNotForbidden as e:
        return ("no-sandbox", str(e))
    import duckdb

    try:
        con = duckdb.connect(request["catalog"], read_only=True, config=request["config"])
        try:
            con.execute("SET enable_progress_bar = false")  # never on the answer's way, whatever it takes
            con.execute("SET allowed_directories = ?", [request["dirs"]])
            con.execute("SET allowed_paths = ?", [request["files"]])
            for key, value in request["sandbox"].items():
                con.execute(f"SET {key} = {value}")
            cur = con.execute(request["sql"], request["params"])
            columns = [d[0] for d in cur.description] if cur.description else []
            return ("rows", columns, cur.fetchall())
        finally:
            con.close()
    except duckdb.Error as e:
        return ("error", f"{type(e).__name__}: {e}")


def main() -> int:
    import os

    # The answer goes out on the original stdout alone: fd 1 now points at stderr, so nothing else
    # (DuckDB's progress bar, a library's print) can mix into it.
    answer_fd = os.dup(1)
    os.dup2(2, 1)
    request = json.loads(sys.stdin.read())
    answer = run(request)
    with os.fdopen(answer_fd, "wb") as out:
        pickle.dump(answer, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
