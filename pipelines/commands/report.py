"""``longforge report RUN_ID``: one self-contained HTML page per run, readable offline (the plots are
PNGs inside the page): the run, the stage funnel, rejects by reason, a length histogram of the
output, the product's own plots, its metrics, scores and artifacts. Everything comes from the
catalog, the output's Parquet (one column, streamed, so the page costs the same for any size) and
the plots the run wrote."""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

import numpy as np

from stages.blocks.plots import new_figure

MARK = "<!-- longforge run report -->"
LENGTH_COLUMNS = ("length_tokens", "n_tokens", "num_tokens", "tokens", "length", "n_chars")


class ReportError(ValueError):
    """A run that cannot be reported, or a file the report must not overwrite; says which."""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode()


def _img(data: str, alt: str) -> str:
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>' \
           f'{html.escape(alt)}</figcaption></figure>'


def _table(columns: list[str], rows: list, limit: int = 200) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{int(v):,}" if v.is_integer() else f"{v:,.4f}" if abs(v) < 1e4 else f"{v:,.1f}"
        if isinstance(v, int):
            return f"{v:,}"
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows[:limit])
    more = f"<p>{len(rows) - limit:,} more rows: query the catalog.</p>" if len(rows) > limit else ""
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def funnel_plot(stats: list[tuple]) -> str:
    """Records in, out, rejected and dropped per stage, in plan order."""
    fig, ax = new_figure(figsize=(9, 1.3 + 0.55 * max(len(stats), 1)), dpi=100)
    labels = [f"{s[1]}. {s[0]}" for s in stats]
    y = np.arange(len(stats))
    for k, (name, color) in enumerate((("in", "#9ab"), ("out", "#36c"), ("rejected", "#d33"), ("dropped", "#e93"))):
        ax.barh(y + (k - 1.5) * 0.2, [s[2 + k] or 0 for s in stats], height=0.2, color=color, label=name)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel("records")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("stage funnel")
    fig.subplots_adjust(left=0.3, right=0.97, top=1 - 0.45 / fig.get_figheight(), bottom=0.6 / fig.get_figheight())
    return _png(fig)


def rejects_plot(by_reason: list[tuple]) -> str:
    fig, ax = new_figure(figsize=(9, 1.3 + 0.4 * max(len(by_reason), 1)), dpi=100)
    labels = [f"{stage}: {reason} ({kind})" for stage, reason, kind, _ in by_reason]
    ax.barh(np.arange(len(by_reason)), [n for *_, n in by_reason], color=["#d33" if k == "rejected" else "#e93"
                                                                           for _, _, k, _ in by_reason])
    ax.set_yticks(np.arange(len(by_reason)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("records")
    ax.set_title("rejected (bad input) and dropped (by design), by reason")
    fig.subplots_adjust(left=0.45, right=0.97, top=1 - 0.45 / fig.get_figheight(), bottom=0.6 / fig.get_figheight())
    return _png(fig)


def local_output(path: str | None) -> Path | None:
    """The run's output folder on this machine: itself, or the staging copy of a remote one (the
    machine that ran it has it; elsewhere the report goes without the output's plots)."""
    from pipelines import storage

    if not path:
        return None
    if storage.is_remote(path):
        staged = storage.staging_dir(path)
        return staged if staged.is_dir() else None
    return Path(path)


def length_histogram(data_dir: Path) -> tuple[str, str] | None:
    """(PNG, what was measured) of the output's lengths: a token or length column when there is
    one, else characters of ``text``; read one column, batch by batch."""
    import pyarrow.parquet as pq

    files = sorted(data_dir.glob("*.parquet"))
    if not files:
        return None
    names = pq.ParquetFile(files[0]).schema_arrow.names
    for column in [c for c in LENGTH_COLUMNS if c in names] + (["text"] if "text" in names else []):
        values = _column_lengths(files, column)
        if len(values):
            break
    else:
        return None
    what = "characters of text" if column == "text" else column
    fig, ax = new_figure(figsize=(8, 3.6), dpi=100)
    positive = values[values > 0]
    if len(positive) and positive.max() / max(positive.min(), 1) > 50:
        bins = np.geomspace(max(positive.min(), 1), positive.max() + 1, 40)
        ax.set_xscale("log")
        ax.hist(positive, bins=bins, color="#36c")
    else:
        ax.hist(values, bins=40, color="#36c")
    ax.set_xlabel(what)
    ax.set_ylabel("records")
    ax.set_title(f"output lengths ({len(values):,} records; median {np.median(values):,.0f})")
    fig.subplots_adjust(left=0.1, right=0.97, top=0.88, bottom=0.2)
    return _png(fig), what


def _column_lengths(files: list[Path], column: str) -> np.ndarray:
    """The column's numbers (characters for ``text``), nulls left out, read batch by batch."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parts = []
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(columns=[column], batch_size=65_536):
            arr = batch.column(0)
            if column == "text":
                arr = pc.utf8_length(arr)
            if not _is_number(arr.type):
                return np.array([])
            parts.append(arr.drop_null().to_numpy(zero_copy_only=False).astype(float))
    return np.concatenate(parts) if parts else np.array([])


def _is_number(t) -> bool:
    import pyarrow.types as pt

    return pt.is_integer(t) or pt.is_floating(t)


def build_report(catalog, run_id: str) -> str:
    """The page's HTML."""
    cols, runs = catalog.query("SELECT run_id, pipeline, status, runner, workers, seed, started_at, finished_at, "
                               "output_path, error, params FROM runs WHERE run_id = ?", [run_id])
    if not runs:
        raise ReportError(f"no run {run_id!r} in {catalog.path} (`longforge catalog runs` lists them)")
    run = dict(zip(cols, runs[0], strict=True))
    _, stats = catalog.query("SELECT stage, step, records_in, records_out, records_rejected, records_dropped, shape, "
                             "seconds FROM stage_stats WHERE run_id = ? ORDER BY step, rowid", [run_id])
    _, reasons = catalog.query("SELECT stage, reason, kind, count(*) AS n FROM rejects WHERE run_id = ? "
                               "GROUP BY ALL ORDER BY n DESC, stage, reason LIMIT 25", [run_id])
    _, metrics = catalog.query("SELECT stage, name, value FROM metrics WHERE run_id = ? ORDER BY stage, name",
                               [run_id])
    _, artifacts = catalog.query("SELECT kind, name, path, n_records, n_bytes, fingerprint FROM artifacts "
                                 "WHERE run_id = ? ORDER BY kind, name", [run_id])
    _, scores = catalog.query("SELECT job, model, metric, count(*), avg(value), min(value), max(value) FROM scores "
                              "WHERE run_id = ? GROUP BY ALL ORDER BY job, metric", [run_id])
    parts = [f"<h1>{html.escape(run['pipeline'] or '?')}: run {html.escape(run_id)}</h1>",
             _table(["status", "runner", "workers", "seed", "started", "finished", "output"],
                    [(run["status"], run["runner"], run["workers"], run["seed"], str(run["started_at"]),
                      str(run["finished_at"]), run["output_path"])])]
    if run["error"]:
        parts.append(f"<p class=error>{html.escape(run['error'])}</p>")
    parts.append("<h2>Stages</h2>")
    if stats:
        parts.append(_img(funnel_plot(stats), "stage funnel: records in, out, rejected, dropped"))
        parts.append(_table(["stage", "step", "in", "out", "rejected", "dropped", "shape", "seconds"], stats))
    if reasons:
        parts += ["<h2>Rejects by reason</h2>", _img(rejects_plot(reasons), "rejects by reason"),
                  _table(["stage", "reason", "kind", "records"], reasons)]
    output = local_output(run["output_path"])
    if output is not None and (output / "data").is_dir():
        hist = length_histogram(output / "data")
        if hist:
            parts += ["<h2>Output lengths</h2>", _img(hist[0], f"output lengths ({hist[1]})")]
    plots = sorted((output / "plots").glob("*.png")) if output is not None and (output / "plots").is_dir() else []
    if plots:
        parts.append("<h2>The product's plots</h2>")
        parts += [_img(base64.b64encode(p.read_bytes()).decode(), p.name) for p in plots]
    if metrics:
        parts += ["<h2>Metrics</h2>", _table(["stage", "name", "value"], metrics, limit=500)]
    if scores:
        parts += ["<h2>Scores</h2>", _table(["job", "model", "metric", "samples", "mean", "min", "max"], scores)]
    if artifacts:
        parts += ["<h2>Artifacts</h2>", _table(["kind", "name", "path", "records", "bytes", "fingerprint"], artifacts)]
    spec = run["params"]
    if spec:
        text = json.dumps(json.loads(spec), indent=2, sort_keys=True) if isinstance(spec, str) else str(spec)
        parts += ["<h2>The pipeline as run</h2>", f"<pre>{html.escape(text)}</pre>"]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:left}img{max-width:100%}figure{margin:1em 0}figcaption{color:#666;font-size:12px}"
             ".error{color:#b00}pre{background:#f6f6f6;padding:1em;font-size:12px;overflow:auto}")
    return (f"<!doctype html>\n{MARK}\n<html><head><meta charset=utf-8><title>{html.escape(run_id)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_report(catalog, run_id: str, path: Path) -> Path:
    """Write the page; never over a file that is not a report of ours."""
    if path.is_dir():
        raise ReportError(f"'{path}' is a folder; give --output a file name (report.html)")
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise ReportError(f"'{path}' exists and is not a regular file; give another --output")
        with open(path, "rb") as f:  # the first bytes only, whatever the file's size
            head = f.read(400).decode("utf-8", errors="replace")
        if MARK not in head:
            raise ReportError(f"'{path}' exists and is not a longforge report; give another --output")
    page = build_report(catalog, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
