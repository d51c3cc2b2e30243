"""The house's measures (issue 34): Python files over 400 lines and functions over 80 lines in the
whole repository (packages, tests, benchmarks), and the stage packages. The CLI's parser table is
the one function allowed over 80 lines.

    .venv/bin/python bench/house.py
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipelines", "stages", "schemas", "catalog", "gpu_jobs")
MEASURED = PACKAGES + ("tests", "bench", "lock")  # every Python file of the repository
ALLOWED_LONG = {"pipelines/commands/parser.py:build_parser"}  # the parser table: one argument a line


def measure() -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    long_files, long_functions = [], []
    for pkg in MEASURED:
        for f in sorted((REPO / pkg).rglob("*.py")):
            rel = f.relative_to(REPO).as_posix()
            text = f.read_text(encoding="utf-8")
            n = len(text.splitlines())
            if n > 400:
                long_files.append((rel, n))
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = node.end_lineno - node.lineno + 1
                    if length > 80 and f"{rel}:{node.name}" not in ALLOWED_LONG:
                        long_functions.append((f"{rel}:{node.name}", length))
    return long_files, long_functions


def main() -> int:
    long_files, long_functions = measure()
    products = sorted(p.name for p in (REPO / "stages").iterdir() if (p / "__init__.py").is_file())
    modules = sum(1 for pkg in PACKAGES for _ in (REPO / pkg).rglob("*.py"))
    print(f"modules: {modules}; stage packages: {len(products)} ({', '.join(products)})")
    print(f"files over 400 lines: {len(long_files)}" + "".join(f"\n  {p} {n}" for p, n in long_files))
    print(f"functions over 80 lines: {len(long_functions)}" + "".join(f"\n  {p} {n}" for p, n in long_functions))
    return 1 if long_files or long_functions else 0


if __name__ == "__main__":
    sys.exit(main())
