"""Indonesian simple hack throughput: documents per second per core of the stop-word hack plus
truncation to 512/256/128 tokens, longforge's pipeline against the same hack and tokenizer in a
plain loop (the engine's overhead).

    .venv/bin/python bench/indonesian.py [--copies 6] [--workers 1]

Documents: the Quran commentary corpus (854 documents, ~530 words each), ``--copies`` times under
new ids. The plain loop, in a fresh process: read the Parquet file, for each document split words,
drop stop words (spaCy's list), one encoding with the MiniLM tokenizer, the three head
truncations, then write the records as Parquet. longforge: ``longforge run`` of
pipelines/indonesian-hack.yaml with only the stop-word hack and no vocabulary stage, end to end
(read, hack, truncate, content kept, Parquet, rejects, catalog), in a fresh process. CPU seconds
are measured from outside; docs/s/core = documents / CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.fresh_process import cpu_and_wall  # noqa: E402
from pipelines.engine.progress import format_table  # noqa: E402

LENGTHS = [512, 256, 128]


def plain_loop(src: Path, out: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    from gpu_jobs.models import tokenizer_path
    from stages.idhack import core

    tok = Tokenizer.from_file(str(tokenizer_path("minilm")))
    tok.no_truncation()
    tok.no_padding()
    stops, _ = core.stopword_list("spacy")
    rows = []
    for r in pq.read_table(src).to_pylist():
        ws = core.words(r["text"])
        kept = [w for w in ws if w.lower() not in stops]
        text = " ".join(kept)
        for length, cut in core.truncations(tok, text, LENGTHS).items():
            rows.append({"id": f"{r['id']}/{length}", "text": text[:cut.chars_kept], "input_ids": cut.ids})
    pq.write_table(pa.Table.from_pylist(rows), out, compression="zstd")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=6)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--plain", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain:
        plain_loop(Path(args.plain[0]), Path(args.plain[1]))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.commands import corpora

    with tempfile.TemporaryDirectory(prefix="bench-id-") as tmp:
        work = Path(tmp)
        base = list(corpora.CORPORA["quran_tafsir_id"].build())
        docs = [{**d, "id": f"{d['id']}#{k}"} for k in range(args.copies) for d in base]
        src = work / "docs.parquet"
        pq.write_table(pa.Table.from_pylist(docs), src)
        spec = (REPO / "pipelines" / "indonesian-hack.yaml").read_text()
        spec = spec.replace("  - stage: hack_vocabulary\n    params: {min_freq: 2, train_split: train}\n", "")
        spec = spec.replace("hacks: [none, stopwords, punctuation, low_freq, recurring]", "hacks: [stopwords]")
        (work / "p.yaml").write_text(spec)
        cpu_p, wall_p, _ = cpu_and_wall([sys.executable, __file__, "--plain", str(src), str(work / "plain.parquet")],
                                        REPO)
        cpu_l, wall_l, _ = cpu_and_wall([sys.executable, "-m", "pipelines.commands.main", "run", str(work / "p.yaml"),
                                         "--input", str(src), "--output", str(work / "out"), "--catalog",
                                         str(work / "c.duckdb"), "--quiet", "--workers", str(args.workers)], REPO)
        n = len(docs)
        words = sum(len(d["text"].split()) for d in docs) / n
        rows = [["stop-word hack + 3 truncations, plain loop", 1, n, f"{wall_p:.1f}", f"{cpu_p:.1f}",
                 round(n / cpu_p), "1.00"],
                [f"longforge run, {args.workers} worker(s)", args.workers, n, f"{wall_l:.1f}", f"{cpu_l:.1f}",
                 round(n / cpu_l), f"{cpu_p / cpu_l:.2f}"]]
        print(f"{n:,} documents ({words:.0f} words each on average), MiniLM tokenizer, spaCy stop words")
        print(format_table(["contender", "workers", "docs", "wall s", "cpu s", "docs/s/core", "vs loop"], rows))
        print(json.dumps({"plain_docs_per_cpu_s": n / cpu_p, "longforge_docs_per_cpu_s": n / cpu_l}))


if __name__ == "__main__":
    main()
