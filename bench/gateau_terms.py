"""What alpha weighs in GATEAU: each term's spread over a real pool and the rank correlation of the
alpha = 0.8 and alpha = 1 (HMG-only) rankings, with the raw terms (the code's way) and with both
terms scaled to [0, 1] first (ours), from one run of pipelines/gateau-smollm2.yaml.

    .venv/bin/python bench/gateau_terms.py [--samples 16]

Samples are Paul Graham essays (2,600 characters of each) asked to repeat a sentence near their
start or near their end, as in tests/pipelines/test_gateau_pipeline.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines.engine.progress import format_table  # noqa: E402


def samples(n: int) -> list[dict]:
    from pipelines.commands import corpora
    from tests.fixtures.gateau_samples import early_late_samples

    return early_late_samples(sorted(corpora.CORPORA["paul_graham"].build(), key=lambda d: d["id"]), n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=16)
    args = ap.parse_args()
    from scipy.stats import spearmanr

    from stages.gateau.core import SelectOptions
    from stages.gateau.stages import reselect

    work = Path(tempfile.mkdtemp(prefix="longforge-gateau-terms-"))
    inp = work / "long_sft.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in samples(args.samples)))
    subprocess.run([sys.executable, "-m", "pipelines.commands.main", "run",
                    str(REPO / "pipelines" / "gateau-smollm2.yaml"),
                    "--input", str(inp), "--output", str(work / "out"), "--catalog", str(work / "c.duckdb"),
                    "--quiet"], check=True, cwd=REPO)
    rows = []
    for scale in ("none", "minmax"):
        full, _ = reselect(str(work / "out"), SelectOptions(alpha=0.8, term_scale=scale))
        hmg_only, _ = reselect(str(work / "out"), SelectOptions(alpha=1.0, term_scale=scale))
        spreads = json.loads(full.schema.metadata[b"longforge.gateau"])["spreads"]
        rho = spearmanr(full.column("rank").to_pylist(), hmg_only.column("rank").to_pylist()).statistic
        rows.append([scale, f"{spreads['hmg_std']:.2e}", f"{spreads['cam_std']:.2e}",
                     f"{spreads['hmg_std'] / spreads['cam_std']:.2f}", f"{rho:.3f}"])
    print(f"{full.num_rows} samples (Paul Graham essays, early / late sentence), SmolLM2-135M stand-in, "
          "softmax pool normalisation")
    print(format_table(["term_scale", "HMG std", "CAM std", "HMG/CAM", "Spearman(a=0.8, a=1)"], rows))


if __name__ == "__main__":
    main()
