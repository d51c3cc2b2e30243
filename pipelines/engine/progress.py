"""Progress bars (shards, records, rate) on stderr, and the end-of-run summary table."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class _Bar:
    def __init__(self, bar: tqdm | None):
        self._bar = bar
        self.records = 0
        self.t0 = time.time()

    def update_with(self, marker: dict) -> None:
        self.records += marker.get("records", 0)
        if self._bar is not None:
            rate = self.records / max(time.time() - self.t0, 1e-9)
            self._bar.set_postfix_str(f"{self.records:,} records, {rate:,.0f} rec/s")
            self._bar.update(1)

    def advance(self, n: int, status: str = "") -> None:
        """Move on by ``n`` items (samples), showing ``status`` (e.g. tokens per second)."""
        if self._bar is not None:
            if status:
                self._bar.set_postfix_str(status, refresh=False)
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class Progress:
    """Shard-level bars; silent when disabled (tests) or when stderr is not a terminal and quiet."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def bar(self, desc: str, total: int, initial: int = 0, unit: str = "shard") -> _Bar:
        if not self.enabled:
            return _Bar(None)
        return _Bar(tqdm(total=total, initial=initial, desc=desc[:48], unit=unit, file=sys.stderr,
                         dynamic_ncols=True, mininterval=0.5))

    def log(self, message: str) -> None:
        if self.enabled:
            print(message, file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        """Said even with --quiet: what was left out, merged or could not be recorded."""
        print(message, file=sys.stderr, flush=True)


def format_table(columns: list[str], rows: list[tuple | list]) -> str:
    cells = [[_fmt(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r[i], int | float) or r[i] is None for r in rows) and rows for i in
               range(len(columns))]

    def line(vals):
        return "  ".join(v.rjust(w) if numeric[i] else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths,
                                                                                                  strict=True)))

    out = [line(columns), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) >= 1 or v == 0 else f"{v:.4f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)
