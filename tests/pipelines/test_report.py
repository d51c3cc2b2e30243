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
