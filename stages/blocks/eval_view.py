"""The evaluation view every benchmark stage writes (spec ../shared/specs/eval-formats.md):
LongBench v1's fields and the project's extras, and the helpers that fill them the same way."""

from __future__ import annotations

import functools
import hashlib
import random
import re

import pyarrow as pa
from pydantic import Field, field_validator

from stages.base import StageParams, TokenizerRef

# LongBench v1's fields (eval-formats.md 1) and the project's extras (3)
LONGBENCH_FIELDS = (
    pa.field("id", pa.string(), nullable=False),
    pa.field("_id", pa.string()),
    pa.field("input", pa.string()),
    pa.field("context", pa.string()),
    pa.field("answers", pa.list_(pa.string())),
    pa.field("length", pa.int64()),  # words of input, context and answers; characters for Chinese
    pa.field("dataset", pa.string()),
    pa.field("language", pa.string()),
    pa.field("all_classes", pa.list_(pa.string())),
    pa.field("length_bucket", pa.int64()),  # the nominal setting, in tokens
    pa.field("length_tokens", pa.int64()),  # the whole prompt, by meta.tokenizer
    pa.field("meta", pa.string()),  # JSON: tokenizer, seed, setting, sizes
)


def english_words(*texts: str) -> int:
    """LongBench's ``length`` for a space-delimited language: whitespace words."""
    return sum(len(t.split()) for t in texts)


# CJK ideographs and kana: scripts written without spaces between words (Korean is spaced)
_UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_KANA = re.compile(r"[\u3040-\u30ff]")
UNSPACED_LANGUAGES = ("zh", "ja")


def is_unspaced(language: str | None, *texts: str) -> bool:
    """Whether a text is in a language written without spaces: its ``language`` when given (``zh``,
    ``zh-CN``, ``ja``...), else read off the script (at least a third of the non-space characters)."""
    if language:
        return language.split("-")[0].split("_")[0].lower() in UNSPACED_LANGUAGES
    chars = sum(len(t) - sum(c.isspace() for c in t) for t in texts)
    return chars > 0 and sum(len(_UNSPACED.findall(t)) for t in texts) * 3 >= chars


def script_language(*texts: str) -> str:
    """The language a text without a ``language`` field is taken for: ``ja`` with kana, ``zh`` for
    other unspaced text, else ``en``."""
    if not is_unspaced(None, *texts):
        return "en"
    return "ja" if any(_KANA.search(t) for t in texts) else "zh"


def longbench_length(language: str | None, *texts: str) -> int:
    """LongBench's ``length``: characters (spaces not counted) for Chinese and the other unspaced
    scripts, whitespace words for the rest."""
    if is_unspaced(language, *texts):
        return sum(len(t) - sum(c.isspace() for c in t) for t in texts)
    return english_words(*texts)


def item_hash(key: str) -> str:
    """The ``_id`` of an item: stable, from its key."""
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def seeded(seed: int, *key) -> random.Random:
    """A random stream of its own for (seed, key): the same on every worker and runner."""
    return random.Random(int.from_bytes(hashlib.sha256(repr((seed, *key)).encode()).digest()[:8], "big"))


class TokenCounter:
    """Counts by the tokenizer a stage's ``params.tokenizer`` names, loaded once per worker."""

    @functools.cached_property
    def _tok(self):
        from gpu_jobs.models import load_tokenizer

        return load_tokenizer(self.params.tokenizer)

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)


def bucket_name(setting: int) -> str:
    """A setting as the dataset names show it: 2048 -> "2k", 1000 -> "1000"."""
    return f"{setting // 1024}k" if setting % 1024 == 0 else str(setting)


class LengthParams(StageParams):
    """What every length-adaptable benchmark stage is given: settings, counted by a named tokenizer,
    and the window an item must land in."""

    settings: tuple[int, ...] = Field((2048, 8192, 32768), description="nominal prompt lengths in tokens")
    tokenizer: TokenizerRef = Field("smollm2", description="counts every length: the evaluated model's tokenizer "
                           "[Ada-LEval's helper: cl100k_base]")
    tolerance: float = Field(0.8, gt=0, le=1, description="an item's prompt tokens lie in [tolerance x setting, "
                             "setting] [ours]")

    @field_validator("settings")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(s < 256 for s in v):
            raise ValueError("settings: one or more prompt lengths of 256 tokens or more, e.g. [2048, 8192]")
        return tuple(sorted(set(v)))
