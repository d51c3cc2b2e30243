"""Every product pipeline on small slices of the demo corpora: one line per pipeline with the
content fingerprint of its output, its side tables' and the records count. A refactoring that
keeps behaviour prints the same lines before and after (issue 34's check).

    .venv/bin/python bench/fingerprints.py OUT_DIR [PIPELINE ...] > fingerprints.txt

Model stages run SmolLM2-135M (and Whisper base for ChFT's speech chain) on two or three
documents each; pipelines whose models are not offline (gateau.yaml's LLaMA-2, perplexity's
default model if absent) print why they were skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO / "out" / "corpora"


def _slice(corpus: str, n: int, out: Path, chars: int | None = None, min_chars: int = 0) -> Path:
    rows = [r for r in pq.read_table(CORPORA / corpus / "data").to_pylist() if len(r["text"]) >= min_chars][:n]
    path = out / f"{corpus}-{n}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"id": r["id"], "text": r["text"][:chars] if chars else r["text"],
                                **({"language": r["language"]} if r.get("language") else {})},
                               ensure_ascii=False) + "\n")
    return path


def _variant(name: str, out: Path, params: dict[str, dict]) -> Path:
    """A copy of a product YAML with some stages' parameters changed, so that a small slice gives
    records (the check is that the code makes the same bytes, not the shipped defaults')."""
    import yaml

    spec = yaml.safe_load((REPO / "pipelines" / f"{name}.yaml").read_text())
    for st in spec["stages"]:
        st["params"] = {**(st.get("params") or {}), **params.get(st.get("label") or st["stage"], {})}
    path = out / f"{name}-variant.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _long_essay(out: Path) -> Path:
    """The shortest essay of 30,000+ characters (LongPO's length filter)."""
    rows = sorted((r for r in pq.read_table(CORPORA / "paul_graham" / "data").to_pylist() if len(r["text"]) >= 30000),
                  key=lambda r: len(r["text"]))[:1]
    path = out / "long-essay.jsonl"
    path.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in rows))
    return path


def _gateau_samples(out: Path) -> Path:
    docs = pq.read_table(CORPORA / "paul_graham" / "data").to_pylist()[:3]
    path = out / "gateau-samples.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            t = " ".join(d["text"].split())[:1200]
            f.write(json.dumps({"id": d["id"], "messages": [
                {"role": "user", "content": t + f'\n\nRepeat the passage that begins with "{t[200:230]}".'},
                {"role": "assistant", "content": t[200:320]}]}) + "\n")
    return path


def _instructions(out: Path) -> Path:
    path = out / "longwriter-instructions.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i, topic in enumerate(["the with statement", "list comprehensions"]):
            f.write(json.dumps({"id": f"w{i}", "language": "en",
                                "text": f"Write a 300-word tutorial for beginners about {topic} in Python."}) + "\n")
    return path


def _cli() -> list[str]:
    """The command line of this checkout's longforge (its module moved with the house)."""
    for module, marker in (("pipelines.commands.main", "pipelines/commands"),
                           ("pipelines" + ".cli.main", "pipelines/cli"), ("pipelines" + ".cli", "pipelines/cli.py")):
        if (REPO / marker).exists():
            return [sys.executable, "-m", module]
    raise SystemExit("no longforge command line in this checkout")


def _posts(out: Path) -> Path:
    """The StackExchange fixture (tests/fixtures/stackexchange/Posts.xml) imported as posts."""
    path = out / "posts.jsonl"
    subprocess.run([*_cli(), "eval", "import", "stackexchange", str(REPO / "tests" / "fixtures" / "stackexchange"
                                                                      / "Posts.xml"), "-o", str(path)],
                   check=True, capture_output=True, cwd=REPO)
    return path


def cases(work: Path) -> dict[str, list[str] | tuple[Path, list[str]]]:
    c = CORPORA
    three = [str(c / "paul_graham"), str(c / "kjv_chapters"), str(c / "python_docs")]
    return {
        "documents": three,
        "icp": three,
        "decomposition": three,
        "concat-chunk": three,
        "utk": three,
        "tsort": [str(c / "kjv_chapters")],
        "licon": [str(c / "kjv_verses")],
        "chft-homophone": [str(_slice("peoples_daily_docs", 60, work))],
        "indonesian-hack": [str(c / "quran_tafsir_id")],
        "gateau-smollm2": [str(_gateau_samples(work))],
        "longalign": (_variant("longalign", work, {"self_instruct": {"answer_tokens": 512}}),
                      [str(_slice("paul_graham", 2, work, chars=3000))]),
        "longwriter": [str(_instructions(work))],
        "longpo": [str(_long_essay(work))],
        "perplexity": [str(_slice("kjv_chapters", 4, work, chars=2000))],
        "chft": [str(_slice("peoples_daily_docs", 2, work, chars=300, min_chars=300))],
        "chft-en": [str(_slice("kjv_chapters", 2, work, chars=700, min_chars=700))],
        "bestanswer": (_variant("bestanswer", work, {name: {"settings": [256, 512]} for name in
                                                     ("se_threads", "bestanswer_plan", "bestanswer_items")}),
                       [str(_posts(work))]),
        "gateau": [],  # LLaMA-2-7B and LongAlign-7B are not offline
    }


def main() -> None:
    out = Path(sys.argv[1]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LONGFORGE_CATALOG": str(out / "catalog.duckdb")}
    only = set(sys.argv[2:])  # names of pipelines to run (default: all)
    for name, case in cases(out).items():
        if only and name not in only:
            continue
        spec, inputs = case if isinstance(case, tuple) else (REPO / "pipelines" / f"{name}.yaml", case)
        if not inputs:
            print(f"{name}\tskipped (no offline input)", flush=True)
            continue
        dest = out / name
        cmd = [*_cli(), "run", str(spec), "--output", str(dest), "--quiet"]
        cmd += [a for p in inputs for a in ("--input", p)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
        if done.returncode != 0:
            print(f"{name}\tfailed rc={done.returncode}: {done.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        run = json.loads((dest / ".longforge" / "run.json").read_text())
        sides = []  # every published table's bytes (Parquet files are written deterministically)
        for sub in sorted(p for p in dest.iterdir() if p.is_dir() and p.name not in ("data", ".longforge")):
            files = sorted(sub.rglob("*.parquet"))
            if files:
                digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]
                sides.append(f"{sub.name}={digest}")
        print(f"{name}\t{run['records']}\t{run['fingerprint']}\t{' '.join(sides)}", flush=True)


if __name__ == "__main__":
    main()
