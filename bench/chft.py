"""ChFT speech throughput: seconds of audio synthesised and recognised per CPU second, longforge's
pipeline against the same engines in a plain loop (the engine's overhead).

    .venv/bin/python bench/chft.py [--docs 4] [--chars 400] [--language zh|en|both]

Documents are the first ``--docs`` People's Daily documents (zh) or KJV chapters (en) of 500+
characters, cut to ``--chars`` at a sentence end. The plain loop, in a fresh process: for each
sentence ``espeak-ng --stdout | sox`` to 16 kHz, 300 ms of silence between sentences, then one
faster-whisper call per document with the settings the stage uses. longforge: ``longforge run
pipelines/chft.yaml`` (or chft-en.yaml) on the same documents, in a fresh process, end to end
(read, select, speak, hear, align, pairs, segments, Parquet, catalog). CPU seconds are the
process's and its children's (espeak-ng, sox), measured from outside; audio seconds are the audio
each made. One run each: both runs sit side by side, so the ratio holds on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.fresh_process import cpu_and_wall  # noqa: E402
from pipelines.engine.progress import format_table  # noqa: E402


def documents(language: str, n: int, chars: int) -> list[dict]:
    from pipelines.commands import corpora
    from stages.chft import core

    name = "peoples_daily_docs" if language == "zh" else "kjv_chapters"
    out = []
    for d in corpora.CORPORA[name].build():
        text = core.canonical(d["text"])
        if len(text) < 500:
            continue
        cut = ""
        for s in core.sentences(text, language):
            if len(cut) + len(s) > chars and cut:
                break
            cut += s
        out.append({"id": d["id"], "text": cut})
        if len(out) == n:
            return out
    return out


def plain_loop(src: Path, language: str) -> dict:
    """The engines with nothing around them: what the stage's work costs at least."""
    import numpy as np

    from gpu_jobs import speech
    from stages.chft import core

    tts = speech.EspeakTts(language=language, rate=160)
    asr = speech.WhisperAsr(language=language, beam_size=5)
    silence = np.zeros(int(speech.SAMPLE_RATE * 0.3), dtype=np.float32)
    seconds = 0.0
    for line in src.read_text().splitlines():
        text = json.loads(line)["text"]
        pieces = []
        for s in core.sentences(text, language):
            if s.strip() and not core.is_punct(s.strip()):
                pieces += [tts.synthesize(s.strip()), silence]
        audio = np.concatenate(pieces)
        asr.transcribe(audio)
        seconds += len(audio) / speech.SAMPLE_RATE
    return {"audio_seconds": seconds}


def bench(language: str, n: int, chars: int, work: Path) -> list[list]:
    from catalog import Catalog

    docs = documents(language, n, chars)
    src = work / f"docs-{language}.jsonl"
    src.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    cpu_p, wall_p, out = cpu_and_wall([sys.executable, __file__, "--plain", str(src), "--language", language],
                                      REPO)
    audio_p = json.loads(out.strip().splitlines()[-1])["audio_seconds"]
    spec = REPO / "pipelines" / ("chft.yaml" if language == "zh" else "chft-en.yaml")
    text = spec.read_text().replace("min_chars: 200", "min_chars: 20").replace("min_chars: 500", "min_chars: 20")
    text = text.replace("test_frac: 0.05, hard_frac: 0.05", "test_frac: 0, hard_frac: 0")  # one voice, as the loop
    text = text.replace("up_to_date_from: 0.9", "up_to_date_from: null")
    (work / f"chft-{language}.yaml").write_text(text)
    catalog = work / f"c-{language}.duckdb"
    cpu_l, wall_l, _ = cpu_and_wall([sys.executable, "-m", "pipelines.commands.main", "run",
                                     str(work / f"chft-{language}.yaml"),
                                 "--input", str(src), "--output", str(work / f"out-{language}"), "--catalog",
                                     str(catalog), "--quiet", "--workers", "1"], REPO)
    metrics = dict(Catalog(str(catalog)).query("SELECT name, value FROM metrics WHERE stage = 'chft_transcribe'")[1])
    audio_l = metrics["audio seconds"]
    chars_total = sum(len(d["text"]) for d in docs)
    return [
        [language, "espeak-ng + faster-whisper, plain loop", len(docs), chars_total, f"{audio_p:.1f}", f"{cpu_p:.1f}",
         f"{wall_p:.1f}", f"{audio_p / cpu_p:.3f}", "1.00"],
        [language, "longforge run (whole pipeline)", len(docs), chars_total, f"{audio_l:.1f}", f"{cpu_l:.1f}",
         f"{wall_l:.1f}", f"{audio_l / cpu_l:.3f}", f"{(audio_l / cpu_l) / (audio_p / cpu_p):.2f}"],
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=4)
    ap.add_argument("--chars", type=int, default=400)
    ap.add_argument("--language", choices=("zh", "en", "both"), default="both")
    ap.add_argument("--plain", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain:
        print(json.dumps(plain_loop(Path(args.plain), args.language)))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-chft-") as tmp:
        for language in ("zh", "en") if args.language == "both" else (args.language,):
            rows += bench(language, args.docs, args.chars, Path(tmp))
    print(format_table(["lang", "contender", "docs", "chars", "audio s", "cpu s", "wall s", "audio s / cpu s",
                        "vs loop"], rows))


if __name__ == "__main__":
    main()
