"""Exact and near-duplicate removal as whole-collection stages.

Both follow one rule that every runner can apply without a global sort: inside a group of
duplicates, the record with the smallest id is kept and every other is dropped, naming the kept id.
For MinHash, a record is dropped when it shares a band bucket with a record of smaller id (and, if
``threshold`` > 0, their estimated Jaccard similarity reaches it).
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
from pydantic import Field

from schemas import TEXT_RECORD
from stages import register
from stages.base import CollectionStage, Dropped, StageParams

_WORD = re.compile(r"\w+", re.UNICODE)
_MERSENNE = np.uint64((1 << 61) - 1)
_MAX_HASH = np.uint64((1 << 32) - 1)


class ExactDedupParams(StageParams):
    lowercase: bool = Field(False, description="compare texts case-insensitively")
    ignore_whitespace: bool = Field(True, description="compare texts with whitespace runs collapsed")


@register
class ExactDedup(CollectionStage):
    """Drop records whose text equals that of a record with a smaller id."""

    name = "exact_dedup"
    Params = ExactDedupParams
    input_schema = TEXT_RECORD

    def keys(self, record: dict) -> Iterable[tuple[str, Any]]:
        text = record["text"]
        if self.params.ignore_whitespace:
            text = " ".join(text.split())
        if self.params.lowercase:
            text = text.lower()
        yield hashlib.sha1(text.encode("utf-8")).hexdigest(), record["id"]

    def decide(self, key: str, values: list[Any]) -> Iterable[Dropped]:
        ids = sorted(values)
        for record_id in ids[1:]:
            yield Dropped(record_id, "exact duplicate", f"same text as {ids[0]}")


class MinhashDedupParams(StageParams):
    ngram: int = Field(5, ge=1, description="shingle size, in units")
    unit: Literal["word", "char"] = Field("word", description="'char' for scripts without spaces (Chinese)")
    bands: int = Field(14, ge=1, description="LSH bands")
    rows_per_band: int = Field(8, ge=1, description="hashes per band (bands x rows = permutations)")
    threshold: float = Field(
        0.0, ge=0.0, le=1.0, description="also require this estimated Jaccard with the kept record (0: off)"
    )
    lowercase: bool = Field(True, description="shingle the lowercased text")


@register
class MinhashDedup(CollectionStage):
    """Near-duplicate removal by MinHash LSH over word or character shingles."""

    name = "minhash_dedup"
    Params = MinhashDedupParams
    input_schema = TEXT_RECORD

    def setup(self) -> None:
        p: MinhashDedupParams = self.params
        rng = np.random.default_rng(self.seed)
        n = p.bands * p.rows_per_band
        self._a = rng.integers(1, int(_MERSENNE), size=n, dtype=np.uint64)
        self._b = rng.integers(0, int(_MERSENNE), size=n, dtype=np.uint64)

    def _shingles(self, text: str) -> np.ndarray:
        p: MinhashDedupParams = self.params
        if p.lowercase:
            text = text.lower()
        units = _WORD.findall(text) if p.unit == "word" else [c for c in text if not c.isspace()]
        if not units:
            return np.zeros(1, dtype=np.uint64)
        h = np.fromiter((zlib.crc32(u.encode("utf-8")) for u in units), dtype=np.uint64, count=len(units))
        k = min(p.ngram, len(h))
        # A shingle's hash is a polynomial of its units' hashes, computed for all shingles at once.
        out = np.zeros(len(h) - k + 1, dtype=np.uint64)
        for i in range(k):
            out = out * np.uint64(1_000_003) + h[i : len(h) - k + 1 + i]
        return np.unique(out & _MAX_HASH)

    def signature(self, text: str) -> np.ndarray:
        if not hasattr(self, "_a"):
            self.setup()
        sh = self._shingles(text)
        # (a*x + b) mod p on 61-bit values overflows uint64; keep x at 32 bits and a below 2^29 instead.
        a = (self._a & np.uint64((1 << 29) - 1)) | np.uint64(1)
        phv = (np.outer(a, sh) + self._b[:, None]) % _MERSENNE
        return (phv & _MAX_HASH).min(axis=1).astype(np.uint32)

    def keys(self, record: dict) -> Iterable[tuple[str, Any]]:
        p: MinhashDedupParams = self.params
        sig = self.signature(record["text"])
        keep_sig = sig.tobytes().hex() if p.threshold > 0 else None
        for band in range(p.bands):
            chunk = sig[band * p.rows_per_band : (band + 1) * p.rows_per_band]
            yield f"{band}:{hashlib.sha1(chunk.tobytes()).hexdigest()[:16]}", (record["id"], keep_sig)

    def decide(self, key: str, values: list[Any]) -> Iterable[Dropped]:
        if len(values) < 2:
            return
        ordered = sorted(values, key=lambda v: v[0])
        kept_id, kept_sig = ordered[0]
        for record_id, sig in ordered[1:]:
            if record_id == kept_id:
                continue
            if self.params.threshold > 0:
                a = np.frombuffer(bytes.fromhex(kept_sig), dtype=np.uint32)
                b = np.frombuffer(bytes.fromhex(sig), dtype=np.uint32)
                if float((a == b).mean()) < self.params.threshold:
                    continue
            yield Dropped(record_id, "near duplicate", f"shares MinHash band {key.split(':')[0]} with {kept_id}")
