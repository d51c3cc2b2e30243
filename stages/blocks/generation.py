"""What every generating stage shares (self_instruct, agent_write, longbench_write_score): where its
LLM is, how it is opened through the run's generation cache, and what counts as a refusal."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import Literal

from pydantic import Field, field_validator

from stages.base import Measured, Outcome, Services, StageParams

# Replies that decline the task (ours), matched case-insensitively against a reply's first 200
# characters. A refusal is the model declining the request where its reply starts: the patterns are
# anchored there, and only markdown decoration may come first, never a quote mark, so a story that
# opens with '"I'm sorry," she whispered' or a shop sign's 'Sorry, the shop is closed' is real text.
_OPENING = r"^[\s*_#>`~-]*"
_I_DECLINE = (r"i(?: can ?not| can't| cannot| won't(?: be able to)?| will not(?: be able to)?| am unable to|"
              r"'m unable to| am not able to|'m not able to| must decline to| have to decline to)")
# what is declined: the request, not a wedding ("I am sorry that I cannot attend"), a belief ("I can't
# believe") or a feeling ("I can't help thinking")
_WHAT = (r"(?:help(?= (?:you|with|on|here)\b|[.!,]|$)|assist|answer|comply|provide(?! for)|fulfil|fulfill|"
         r"create|complete|continue|generate|produce|write|do that|do this(?! any)|engage|support that|"
         r"share|give you)")
_OTHER_DECLINES = (r"i must decline|i have to decline|(?:that's|that is|this is) not something i can|"
                   r"(?:i'm|i am) not comfortable|i don't think i (?:should|can)|"
                   r"against (?:my|the) (?:guidelines|policies|policy|programming|principles)|"
                   r"violates? (?:the |my |our |openai's )?(?:content |usage )?(?:polic(?:y|ies)|guidelines)")
REFUSAL_PATTERNS = (
    # an apology followed, in its first line, by declining: "I'm sorry, but I can't help with that"
    rf"{_OPENING}(?:i'?m sorry|i am sorry|sorry|apologies|my apologies|i apologi[sz]e|unfortunately)\b"
    rf"[^\n]{{0,80}}?\b(?:{_I_DECLINE} {_WHAT}|{_OTHER_DECLINES})",
    # declining outright: "I cannot assist with ...", "I must decline this request"
    rf"{_OPENING}(?:unfortunately,? )?(?:{_I_DECLINE} {_WHAT}|i must decline\b|i have to decline\b)",
    # "As an AI (language model), I ..." but not "As an AI ethics researcher, Dr. Lee ..."
    rf"{_OPENING}as an ai(?: language model| assistant| model)?,? i\b",
    rf"{_OPENING}(?:很抱歉|非常抱歉|抱歉|对不起)[^\n]{{0,40}}?我(?:无法|不能|不可以|没办法)"
    r"(?:提供|完成|回答|帮助|协助|满足|处理|生成|撰写|写|继续|执行|参与讨论)",
    rf"{_OPENING}作为(?:一[个名])?(?:ai|人工智能)(?:语言模型|助手|模型)?[，,]?\s*我",
)


class GeneratorParams(StageParams):
    model: str = Field("smollm2-135m", description="the LLM: alias, folder, cached Hub id, or the served name")
    backend: Literal["local", "openai"] = "local"
    base_url: str | None = Field(None, description="openai backend: e.g. http://localhost:8000/v1")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    timeout_s: float = Field(120.0, gt=0, description="openai backend: seconds per request")
    retries: int = Field(4, ge=0, description="openai backend: retries on connection errors, 429 and 5xx")
    refusal_patterns: tuple[str, ...] = Field(
        REFUSAL_PATTERNS, description="regular expressions (case-insensitive) that mark a reply as a refusal "
        "when they match its first 200 characters; anchor them at the reply's start (^) [ours]")

    @field_validator("api_key_env")
    @classmethod
    def _key_env_allowed(cls, v: str | None) -> str | None:
        from gpu_jobs.generate import key_env_allowed

        if v is not None and not key_env_allowed(v):
            raise ValueError(f"'{v}' may not be sent to a generation server: use OPENAI_API_KEY or "
                             "LONGFORGE_<NAME>_API_KEY, or allow it with `longforge run --api-key-env " + v + "`; "
                             "a Hugging Face token is never sent")
        return v

    @property
    def device(self) -> str:
        return "cpu" if self.backend == "openai" else "auto"


def open_generator(p: GeneratorParams, services: Services, *, model: str | None = None,
                   base_url: str | None = None, rope=None):
    """The generator the parameters name (or another ``model`` / ``base_url`` of the same backend,
    or the local model with a RoPE extension), behind the run's generation cache when there is one."""
    from gpu_jobs.generate import FileGenerationCache, make_generator

    if p.backend == "openai":
        extra = {"base_url": base_url or p.base_url, "api_key_env": p.api_key_env, "timeout": p.timeout_s,
                 "retries": p.retries}
    else:
        extra = {"rope": rope} if rope is not None else {}
    folder = services.generation_cache
    return make_generator(model or p.model, p.backend, cache=FileGenerationCache(folder) if folder else None,
                          **extra)


@functools.lru_cache(maxsize=32)
def _compiled(patterns: tuple[str, ...]) -> tuple[re.Pattern, ...]:
    return tuple(re.compile(x, re.IGNORECASE) for x in patterns)


def refusal(text: str, patterns: tuple[str, ...]) -> str | None:
    """The pattern a reply's start matches, or None."""
    head = text.strip()[:200].replace("\u2019", "'")  # a curly apostrophe, as most chat models write it
    return next((r.pattern for r in _compiled(tuple(patterns)) if r.search(head)), None)


def refused(generation, patterns: tuple[str, ...]) -> str | None:
    """Why a generation is a refusal (no content, filtered, or a refusal pattern), or None."""
    pattern = refusal(generation.text, patterns)
    if pattern or generation.finish_reason in ("content_filter", "no_content"):
        return f"finish_reason {generation.finish_reason}" + (f"; matches {pattern!r}" if pattern else "")
    return None


def with_call_counts(outcomes: Iterator[Outcome], *generators) -> Iterator[Outcome]:
    """``outcomes``, then a :class:`Measured` with the ``generations_made`` and ``generations_cached``
    of the generators (each counted once) while they were produced: every call a record cost,
    whether it gave a row or not."""
    gens = list({id(g): g for g in generators if g is not None}.values())

    def tally(name: str) -> int:  # a generator without counters (a plain backend, a test's fake) counts 0
        return sum(v for g in gens if isinstance(v := getattr(g, name, 0), int) and not isinstance(v, bool))

    made0, cached0 = tally("calls"), tally("hits")
    yield from outcomes
    yield Measured({"generations_made": tally("calls") - made0, "generations_cached": tally("hits") - cached0})
