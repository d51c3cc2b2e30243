"""ChFT (spec chft.md 4, 7): round trips on the Chinese Debian Reference (the product's tests use
People's Daily), through pipelines/chft-homophone.yaml. Every record's pairs, applied to its
hypothesis at their offsets, give its reference; a full text's segments, in order, give the full
text on both sides; every ``itn`` pair writes one number two ways (cn2an reads both into the same
digits), every ``homophone`` pair reads the same without tones (pypinyin) and every ``punctuation``
pair holds marks only. Written apart from stages/chft*."""

from __future__ import annotations

import re
import unicodedata

import pyarrow.parquet as pq
from pypinyin import lazy_pinyin

from tests.conftest import REPO, build_corpus, run_cli, write_jsonl


def apply(hypothesis: str, pairs: list[dict]) -> str:
    out, at = [], 0
    for p in sorted(pairs, key=lambda p: p["hyp_start"]):
        assert p["hyp_start"] >= at and hypothesis[p["hyp_start"]:p["hyp_end"]] == p["hyp_span"]
        out += [hypothesis[at:p["hyp_start"]], p["ref_span"]]
        at = p["hyp_end"]
    return "".join(out) + hypothesis[at:]


def marks_only(text: str) -> bool:
    return all(unicodedata.category(c)[0] in "PSZ" for c in text)


def same_number(a: str, b: str) -> bool:
    """Both spans written in digits by cn2an (a library of its own, not the product) and compared
    without spaces or thousands separators; a span with no number in it is no ITN pair."""
    import cn2an

    def digits(x: str) -> str:
        try:
            read = cn2an.transform(x, "cn2an")
        except (ValueError, KeyError, IndexError):
            read = x
        return re.sub(r"[\s,，]", "", read)

    x, y = digits(a), digits(b)
    if re.fullmatch(r"-?\d+(?:\.\d+)?", x) and re.fullmatch(r"-?\d+(?:\.\d+)?", y):
        return float(x) == float(y)  # 二点一零零 and 2.100
    return bool(re.search(r"\d", x + y)) and x == y


def test_pairs_and_segments_rebuild_the_chinese_debian_reference(tmp_path):
    chapters = pq.read_table(f"{build_corpus('debian_reference_zh', tmp_path)}/data").to_pylist()
    docs = []
    for ch in sorted(chapters, key=lambda r: r["id"])[:6]:  # runs of paragraphs of 400-1,500 characters
        run, size = [], 0
        for para in re.split(r"\n\s*\n", ch["text"]):
            run.append(para)
            size += len(para)
            if size >= 400:
                if size <= 1500:
                    docs.append({"id": f"{ch['id']}#{len(docs)}", "text": "\n".join(run), "language": "zh"})
                run, size = [], 0
    src = write_jsonl(tmp_path / "docs.jsonl", docs[:120])
    done = run_cli("run", str(REPO / "pipelines" / "chft-homophone.yaml"), "--input", str(src), "--output",
                   str(tmp_path / "out"), "--catalog", str(tmp_path / "c.duckdb"), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pq.read_table(str(tmp_path / "out" / "data")).to_pylist()
    full = {r["doc_id"]: r for r in rows if r["setting"] == "full_text"}
    assert len(full) >= 40
    kinds = set()
    for r in rows:
        assert apply(r["hypothesis"], r["pairs"]) == r["reference"], r["id"]
        for p in r["pairs"]:
            kinds.add(p["type"])
            if p["type"] == "punctuation":
                assert marks_only(p["hyp_span"]) and marks_only(p["ref_span"]), p
            if p["type"] == "itn":  # one number, two ways: the same once both are read into digits
                assert same_number(p["hyp_span"], p["ref_span"]), p
            if p["type"] == "homophone":  # read the same, without tones (pypinyin)
                assert lazy_pinyin(p["hyp_span"]) == lazy_pinyin(p["ref_span"]) and p["hyp_span"] != p["ref_span"]
    for doc_id, f in full.items():
        segs = sorted((r for r in rows if r["doc_id"] == doc_id and r["setting"] == "segment"), key=lambda r: r["id"])
        if segs:
            segs.sort(key=lambda r: int(r["id"].rsplit("#", 1)[1]))
            assert "".join(s["reference"] for s in segs).replace(" ", "") == f["reference"].replace(" ", "")
            assert "".join(s["hypothesis"] for s in segs).replace(" ", "") == f["hypothesis"].replace(" ", "")
    assert {"homophone", "punctuation"} <= kinds
