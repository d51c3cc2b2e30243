"""``longforge report``: a real run's page (People's Daily through the ChFT homophone channel, with a
rejected and a dropped document), its plots decoded and checked, then the page opened in headless
Chromium and the screenshot checked for the plots' ink."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
from matplotlib.image import imread

from tests.conftest import REPO, build_corpus, run_cli, write_jsonl

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
BAR_BLUE = np.array([0x33, 0x66, 0xCC]) / 255  # the colour of the report's bars


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    rows = pq.read_table(f"{build_corpus('peoples_daily_docs', base)}/data").to_pylist()[::100]
    src = write_jsonl(base / "d.jsonl", rows + [{"id": "empty", "text": ""}, {"id": "short", "text": "短文。"}])
    done = run_cli("run", str(REPO / "pipelines" / "chft-homophone.yaml"), "--input", str(src), "--output",
                   str(base / "out"), "--catalog", str(base / "c.duckdb"), "--quiet")
    assert done.returncode == 0, done.stderr[-2000:]
    done = run_cli("report", "latest", "--catalog", str(base / "c.duckdb"), "--output", str(base / "r.html"))
    assert done.returncode == 0, done.stderr
    return base, (base / "r.html").read_text(encoding="utf-8")


def images(page: str) -> dict[str, np.ndarray]:
    return {alt: imread(io.BytesIO(base64.b64decode(data)), format="png")
            for alt, data in re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', page)}


def ink(pixels: np.ndarray) -> float:
    """The share of pixels that are not white."""
    return float(np.mean(np.any(pixels[..., :3] < 0.9, axis=-1)))


def test_the_page_holds_the_funnel_rejects_lengths_and_the_catalog_figures(report):
    _, page = report
    imgs = images(page)
    assert {"stage funnel: records in, out, rejected, dropped", "rejects by reason"} <= set(imgs)
    assert any(a.startswith("output lengths") for a in imgs)
    for alt, pixels in imgs.items():
        assert 0.02 < ink(pixels) < 0.9, alt  # drawn on, not blank, not a solid block
        rgb = pixels[..., :3]
        assert np.mean(rgb.max(axis=-1) - rgb.min(axis=-1) > 0.3) > 0.005, alt  # coloured bars, not only axes
    assert "empty text" in page and "length" in page and "cer_before (mean)" in page  # reasons, metrics
    assert re.search(r"<td>chft_pairs</td><td>0</td><td>\d+</td>", page)


def test_headless_chromium_renders_the_plots(report, tmp_path):
    base, _ = report
    browser = next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        pytest.fail("no headless Chromium: apt-get install -y chromium-headless-shell (make setup does)")
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,2400", (base / "r.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = imread(shot)
    assert pixels.shape[0] == 2400 and ink(pixels) > 0.03
    blue = np.all(np.abs(pixels[..., :3] - BAR_BLUE) < 0.03, axis=-1)
    rows_with_bars = np.flatnonzero(blue.any(axis=1))
    assert blue.sum() > 2000 and rows_with_bars.max() - rows_with_bars.min() > 500  # the funnel and the histogram


def test_a_report_never_overwrites_a_file_of_someone_else(report, tmp_path):
    base, _ = report
    mine = tmp_path / "notes.html"
    mine.write_text("<p>my notes</p>")
    done = run_cli("report", "latest", "--catalog", str(base / "c.duckdb"), "--output", str(mine))
    assert done.returncode == 2 and "not a longforge report" in done.stderr and mine.read_text() == "<p>my notes</p>"
    again = run_cli("report", "latest", "--catalog", str(base / "c.duckdb"), "--output", str(base / "r.html"))
    assert again.returncode == 0  # its own page is replaced
    missing = run_cli("report", "run-nope", "--catalog", str(base / "c.duckdb"), "--output", str(tmp_path / "x.html"))
    assert missing.returncode == 2 and "no run 'run-nope'" in missing.stderr


def _limited(gib: float):
    """A child process limited to ``gib`` GiB of address space: a whole-file read of a bigger file
    fails there instead of taking the machine's memory."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (int(gib * (1 << 30)), int(gib * (1 << 30))))
    return limit


def test_report_output_is_checked_for_kind_and_size_before_it_is_read(report, tmp_path):
    """Issue 32, points 14 and 15: a folder, a device, a FIFO and a 3 GB file as --output."""
    import os
    import subprocess

    from tests.conftest import LONGFORGE

    base, _ = report
    big = tmp_path / "big.html"
    with open(big, "wb") as f:  # sparse: 3 GB that take no disk
        f.truncate(3 << 30)
    os.mkfifo(tmp_path / "fifo.html")
    (tmp_path / "folder").mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for target, said in ((big, "not a longforge report"), ("/dev/zero", "not a regular file"),
                         (tmp_path / "fifo.html", "not a regular file"), (tmp_path / "folder", "is a folder")):
        done = subprocess.run([*LONGFORGE, "report", "latest", "--catalog", str(base / "c.duckdb"), "--output",
                               str(target)], env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
                              preexec_fn=_limited(2.5))
        assert done.returncode == 2 and said in done.stderr, (target, done.stderr[-2000:])
        assert "Traceback" not in done.stderr
    assert big.stat().st_size == 3 << 30 and sorted(p.name for p in (tmp_path / "folder").iterdir()) == []


def test_a_data_file_given_as_the_pipeline_is_refused_after_reading_one_mebibyte(tmp_path):
    import os
    import subprocess

    from tests.conftest import LONGFORGE

    big = tmp_path / "BIG.jsonl"
    with open(big, "wb") as f:
        f.truncate(3 << 30)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for pipeline in (big, "/dev/zero", tmp_path):
        done = subprocess.run([*LONGFORGE, "run", str(pipeline), "--input", str(big)], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=120, preexec_fn=_limited(2.5))
        assert done.returncode == 2, (pipeline, done.stderr[-2000:])
        assert "larger than 1024 KiB" in done.stderr or "a folder, not a pipeline file" in done.stderr, done.stderr
