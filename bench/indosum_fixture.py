"""An IndoSum-format stand-in with real labels, for the Indonesian hack's classifier figure.

IndoSum (Kurniawan and Louvan, 2018) is not offline. This writes its published layout
({train,dev,test}.01.jsonl; paragraphs -> sentences -> tokens; a ``category`` per article) from the
Indonesian Debian Reference: each chapter cut into articles of about ``--chars`` characters of
whole paragraphs, the chapter being the category (a real topic label: package management, the
network, programming ...). Every fifth article is test, the one after it dev, the rest train.

    longforge corpus build debian_reference_id
    .venv/bin/python bench/indosum_fixture.py out/corpora/debian_reference_id out/indosum-debref
    longforge eval import indosum out/indosum-debref --fold 1 -o out/indosum-debref.jsonl
    longforge run pipelines/indonesian-hack.yaml --input out/indosum-debref.jsonl --output out/idhack-indosum
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pyarrow.parquet as pq

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def articles(text: str, chars: int) -> list[list[str]]:
    """Whole paragraphs (blank-line runs, lines joined) grouped until ``chars`` characters; list
    lines and headings of fewer than 40 characters are left out (they are the table of contents)."""
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    paras = [p for p in paras if len(p) >= 40]
    out, current, size = [], [], 0
    for p in paras:
        current.append(p)
        size += len(p)
        if size >= chars:
            out.append(current)
            current, size = [], 0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path, help="the built debian_reference_id corpus folder")
    ap.add_argument("out", type=Path, help="a new folder for the IndoSum-format files")
    ap.add_argument("--chars", type=int, default=2500, help="characters of paragraphs per article")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=False)
    rows = sorted(pq.read_table(str(args.corpus / "data")).to_pylist(), key=lambda r: r["id"])
    splits: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    for r in rows:
        chapter = r["id"].rsplit("/", 1)[-1]
        for k, paras in enumerate(articles(r["text"], args.chars)):
            split = "test" if k % 5 == 0 else "dev" if k % 5 == 1 else "train"
            doc = {"category": chapter, "gold_labels": [], "id": f"{chapter}-{k}", "source": "debian-reference-id",
                   "source_url": "", "summary": [],
                   "paragraphs": [[s.split() for s in _SENTENCE_END.split(p) if s] for p in paras]}
            splits[split].append(json.dumps(doc, ensure_ascii=False))
    for split, lines in splits.items():
        (args.out / f"{split}.01.jsonl").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
        print(f"{split}: {len(lines)} articles")


if __name__ == "__main__":
    main()
