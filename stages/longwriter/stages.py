"""LongWriter as stages (spec ../shared/specs/longwriter.md): ``agent_write`` (instructions ->
plan -> sections written strictly in order -> one long answer in LongWriter-6k's ``messages``
format) and ``length_curation`` (minimum tuning: one stated required length, then S_l >= 80).
The pure parts are in :mod:`stages.longwriter.core`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Literal

import pyarrow as pa
from pydantic import Field

from schemas import MESSAGE, REGISTRY, RecordSchema
from stages import register
from stages.base import Dropped, Measured, Outcome, RecordStage, Rejected, Resources, StageParams
from stages.blocks.generation import GeneratorParams, open_generator, refused, with_call_counts
from stages.longwriter import core

LONGWRITER_ROW = REGISTRY.register(RecordSchema("longwriter_row", 1, (
    pa.field("id", pa.string(), nullable=False),
    pa.field("messages", pa.list_(MESSAGE)),  # exactly LongWriter-6k's long.jsonl; the rest is meta
    pa.field("prompt", pa.string()),
    pa.field("language", pa.string()),
    pa.field("source", pa.string()),
    pa.field("plan_raw", pa.string()),
    pa.field("steps", pa.list_(pa.string())),
    pa.field("word_targets", pa.list_(pa.int64())),
    pa.field("n_steps", pa.int32()),
    pa.field("sections", pa.list_(pa.string())),
    pa.field("response_length", pa.int64()),  # LongBench-Write words
    pa.field("generator", pa.string()),  # JSON: model, backend, sampling
    pa.field("status", pa.string()),
), doc="A long-output SFT row written by AgentWrite, with its plan and sections."))

CURATED_FIELDS = (pa.field("length", pa.int64()), pa.field("response_length", pa.int64()),
                  pa.field("score_length", pa.float64()))


class AgentWriteParams(GeneratorParams):
    model: str = Field("smollm2-135m", description="the writer: alias, folder, cached Hub id, or the served name "
                       "[paper: gpt-4o-2024-05-13]")
    timeout_s: float = Field(600.0, gt=0, description="openai backend: seconds per request (sections are long)")
    prompt_field: str = Field("text", description="the instruction's field: a record's text (for LongWriter's "
                              "`prompt` key, give the input `text_field: prompt`)")
    plan_tokens: int = Field(4096, gt=0, description="new tokens of the plan call [code: 4096]")
    section_tokens: int = Field(4096, gt=0, description="new tokens of each section call [code: 4096]")
    temperature: float = Field(1.0, ge=0, description="[code: 1.0]")
    plan_asks: int = Field(2, ge=1, description="plan calls (another seed each) before an unusable plan drops "
                           "the instruction [ours; the code keeps any plan]")
    max_steps: int = Field(core.MAX_STEPS, gt=0, description="plans with more steps are dropped [code: 50]")
    require_targets: bool = Field(True, description="every plan step names a word count [spec 5; the code: no check]")
    min_words: int | None = Field(None, gt=0, description="answers shorter are dropped [off: parity with the "
                                  "release; 2000 for new data]")
    max_words: int | None = Field(None, gt=0, description="answers longer are dropped [off; 32000 for new data]")
    strip_labels: bool = Field(True, description="remove 'Paragraph k:' labels a section opens with [paper]")
    batch_records: int = Field(2, gt=0, description="instructions per checkpointed batch")


def instruction_schema(field: str) -> RecordSchema:
    """What a stage that reads one request per record needs: an id and the request's field."""
    return RecordSchema("instruction", 1, (pa.field("id", pa.string(), nullable=False), pa.field(field, pa.string())))


class PoolParams(GeneratorParams):
    method: Literal["rule", "llm"] = Field("rule", description="rule: a stated length or a long form asked for "
                                           "at length [ours]; llm: a yes/no call per request [paper: GPT-4o]")
    prompt_field: str = Field("text", description="the request's field")
    min_required_words: int = Field(2000, gt=0, description="the answer a kept request needs [paper: 2000]")
    asks: int = Field(2, ge=1, description="llm: calls (another seed each) before an unreadable reply drops "
                      "the request")


@register
class LongOutputPool(RecordStage):
    """Spec 3.1: from a general pool of requests, the ones that need a multi-thousand-word answer.
    Kept requests gain ``pool_reason``; the others are dropped with the reason, so the catalog's
    drop table gives the rule's figures (kept, and dropped by reason)."""

    name = "long_output_pool"
    Params = PoolParams
    input_schema = instruction_schema("text")
    uses_generations = True

    def __init__(self, params: PoolParams | None = None, seed: int = 0):
        super().__init__(params, seed)
        self.input_schema = instruction_schema(self.params.prompt_field)

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return self.adding(upstream, "long_output_pool", (pa.field("pool_reason", pa.string()),))

    def resources(self) -> Resources:
        p: PoolParams = self.params
        return Resources(batch_size=16, device=p.device, model=p.method == "llm")

    def setup(self) -> None:
        self._gen = open_generator(self.params, self.services) if self.params.method == "llm" else None

    def process(self, record: dict) -> Iterator[Outcome]:
        return with_call_counts(self._decide(record), self._gen)

    def _decide(self, record: dict) -> Iterator[Outcome]:
        p: PoolParams = self.params
        rid, text = record["id"], record.get(p.prompt_field)
        if not isinstance(text, str) or not text.strip():
            yield Rejected(rid, "empty instruction", f"'{p.prompt_field}' is empty or missing")
            return
        if p.method == "rule":
            keep, why = core.needs_long_output(text, p.min_required_words)
        else:
            from gpu_jobs.generate import GenerationError, GenParams

            keep, why = None, ""
            for attempt in range(p.asks):
                try:
                    g = self._gen.generate_full(core.pool_prompt(text, p.min_required_words),
                                                GenParams(max_new_tokens=8, temperature=0.0, seed=self.seed + attempt))
                except GenerationError as e:
                    yield Rejected(rid, "generation failed", f"pool: {str(e)[:400]}")
                    return
                keep = core.parse_yes_no(g.text)
                if keep is not None:
                    why = f"the model said {g.text.strip()[:20]!r}"
                    break
            if keep is None:
                yield Dropped(rid, "no yes or no", f"{p.asks} replies without one")
                return
        if keep:
            yield {**record, "pool_reason": why}
        else:
            yield Dropped(rid, "short answer enough", why)


@register
class AgentWrite(RecordStage):
    """Plan, then write each section in order conditioned on the plan and all text so far; one
    instruction per record, in parallel across the workers. Every call goes through the run's
    generation cache, so a rerun after a kill pays for no finished plan or section; a failed,
    refused or cut call rejects the instruction and is never saved as text."""

    name = "agent_write"
    Params = AgentWriteParams
    input_schema = instruction_schema("text")
    uses_generations = True

    def __init__(self, params: AgentWriteParams | None = None, seed: int = 0):
        super().__init__(params, seed)
        self.input_schema = instruction_schema(self.params.prompt_field)

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return LONGWRITER_ROW

    def resources(self) -> Resources:
        return Resources(batch_size=self.params.batch_records, device=self.params.device, model=True)

    def setup(self) -> None:
        self._gen = open_generator(self.params, self.services)

    def _call(self, messages: list[dict], max_new_tokens: int, seed: int, what: str):
        """(text, None) or (None, the reject or drop that ends this instruction)."""
        from gpu_jobs.generate import GenerationError, GenParams

        try:
            g = self._gen.generate_full(messages, GenParams(max_new_tokens=max_new_tokens,
                                                            temperature=self.params.temperature, seed=seed))
        except GenerationError as e:
            return None, ("generation failed", f"{what}: {str(e)[:400]}")
        why_refused = refused(g, self.params.refusal_patterns)
        if why_refused:
            return None, (f"{what.split()[0]} refused", f"{what}: {why_refused}")
        if g.finish_reason == "length":
            return None, (f"{what.split()[0]} cut by the token limit", f"{what}: {max_new_tokens} new tokens")
        if not g.text.strip():
            return None, ("empty " + what.split()[0], what)
        return g.text, None

    def process(self, record: dict) -> Iterator[Outcome]:
        return with_call_counts(self._write(record), self._gen)

    def _write(self, record: dict) -> Iterator[Outcome]:
        p: AgentWriteParams = self.params
        rid, instruction = record["id"], record.get(p.prompt_field)
        if not isinstance(instruction, str) or not instruction.strip():
            yield Rejected(rid, "empty instruction", f"'{p.prompt_field}' is empty or missing")
            return
        plan, plan_raw, tries = None, "", []
        for attempt in range(p.plan_asks):
            plan_raw, why = self._call(core.plan_prompt(instruction), p.plan_tokens, self.seed + attempt, "plan")
            if why:
                yield Rejected(rid, *why)
                return
            plan = core.parse_plan(plan_raw, p.max_steps, p.require_targets)
            if plan.ok:
                break
            tries.append("; ".join(plan.problems))
        if plan is None or not plan.ok:
            yield Dropped(rid, "plan unusable", f"{p.plan_asks} tries: {' | '.join(tries)}")
            return
        sections: list[str] = []
        for k in range(len(plan.steps)):  # strictly in order: each section sees all text before it
            text, why = self._call(core.write_prompt(instruction, plan.steps, sections, k), p.section_tokens,
                                   self.seed, f"section {k + 1} of {len(plan.steps)}")
            if why:  # an empty section drops the instruction [code]; a failure rejects it
                yield Dropped(rid, *why) if why[0].startswith("empty") else Rejected(rid, *why)
                return
            sections.append(text.strip())
        response = core.assemble(sections, p.strip_labels)
        n_words = core.count_words(response)
        yield Measured({"sections": len(sections), "words": n_words})
        if p.min_words and n_words < p.min_words:
            yield Dropped(rid, "too short", f"{n_words} words (min_words {p.min_words})")
            return
        if p.max_words and n_words > p.max_words:
            yield Dropped(rid, "too long", f"{n_words} words (max_words {p.max_words})")
            return
        yield {"id": rid, "messages": [{"role": "user", "content": instruction},
                                       {"role": "assistant", "content": response}],
               "prompt": instruction, "language": record.get("language"), "source": record.get("source"),
               "plan_raw": plan_raw, "steps": plan.steps, "word_targets": plan.word_targets,
               "n_steps": len(plan.steps), "sections": sections, "response_length": n_words,
               "generator": json.dumps({"model": p.model, "backend": p.backend, "temperature": p.temperature,
                                        "plan_tokens": p.plan_tokens, "section_tokens": p.section_tokens},
                                       sort_keys=True),
               "status": "ok"}


class CurationParams(StageParams):
    mode: Literal["reference", "better"] = Field("reference", description="required-length parser: the "
                                                 "evalscope rules with their quirks, or ours [spec 3.8]")
    threshold: float = Field(80.0, ge=0, le=100, description="keep rows with S_l at least this [paper: 80]")


@register
class LengthCuration(RecordStage):
    """Minimum tuning (spec 3.8): keep rows whose first user turn states exactly one required length
    and whose answer follows it (S_l >= threshold); adds length, response_length, score_length."""

    name = "length_curation"
    Params = CurationParams
    input_schema = RecordSchema("longwriter_chat_input", 1, (pa.field("id", pa.string(), nullable=False),
                                                pa.field("messages", pa.list_(MESSAGE))))

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return self.adding(upstream, "curated", CURATED_FIELDS)

    def process(self, record: dict) -> Iterator[Outcome]:
        p: CurationParams = self.params
        msgs = record.get("messages") or []
        user = next((m.get("content") or "" for m in msgs if m.get("role") == "user"), None)
        answer = next((m.get("content") or "" for m in msgs if m.get("role") == "assistant"), None)
        if user is None or answer is None:
            yield Rejected(record["id"], "no user and assistant turn", f"{len(msgs)} turns")
            return
        length = core.required_length(user, p.mode)
        if length is None:
            yield Dropped(record["id"], "no single required length", f"mode {p.mode}")
            return
        produced = core.count_words(answer)
        if length == 0 or produced == 0:
            yield Dropped(record["id"], "length 0", f"required {length}, produced {produced}")
            return
        s = core.length_score(length, produced)
        if s < p.threshold:
            yield Dropped(record["id"], f"S_l below {p.threshold:g}", f"required {length}, produced {produced}, "
                          f"S_l {s:.1f}")
            return
        yield {**record, "length": length, "response_length": produced, "score_length": s}


class LongBenchWriteParams(GeneratorParams):
    model: str = Field("smollm2-135m", description="the judge [paper: gpt-4o-2024-05-13]")
    judge_tokens: int = Field(1024, gt=0, description="[code: 1024]")
    temperature: float = Field(0.5, ge=0, description="[code: 0.5]")
    judge_asks: int = Field(5, ge=1, description="judge calls (another seed each) before a sample leaves S_q [code: 5]")
    length_only: bool = Field(False, description="S_l alone: no judge is loaded")
    batch_records: int = Field(4, gt=0)


SCORED_FIELDS = (pa.field("required_length", pa.int64()), pa.field("response_length", pa.int64()),
                 pa.field("score_length", pa.float64()), pa.field("ratings", pa.string()))


def prediction_parts(record: dict) -> tuple[str | None, str | None, int | None]:
    """(request, response, required length) of a LongBench-Write prediction: its `prompt`,
    `response` and `length` keys, or a `messages` pair, in the record or its metadata."""
    meta = json.loads(record.get("metadata") or "{}") if isinstance(record.get("metadata"), str) else {}
    src = {**meta, **{k: v for k, v in record.items() if v is not None}}
    prompt, response = src.get("prompt"), src.get("response")
    msgs = src.get("messages")
    if isinstance(msgs, list):
        prompt = prompt or next((m.get("content") for m in msgs if m.get("role") == "user"), None)
        response = response or next((m.get("content") for m in msgs if m.get("role") == "assistant"), None)
    if response is None and "metadata" in record and "text" in record:
        response = record["text"]
    length = src.get("length")
    return prompt, response, int(length) if isinstance(length, int | float) and not isinstance(length, bool) else None


@register
class LongBenchWriteScore(RecordStage):
    """LongBench-Write (spec 3.7): S_l of each prediction against its required length, and the judge's
    six ratings (JSON, asked again when malformed); the stage's metrics are S_l, S_q per dimension,
    S_q and S over the run."""

    name = "longbench_write_score"
    Params = LongBenchWriteParams
    input_schema = RecordSchema("prediction", 1, (pa.field("id", pa.string(), nullable=False),))
    uses_generations = True

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return self.adding(upstream, "longbench_write", SCORED_FIELDS)

    def resources(self) -> Resources:
        return Resources(batch_size=self.params.batch_records, device=self.params.device,
                         model=not self.params.length_only)

    def setup(self) -> None:
        self._gen = None if self.params.length_only else open_generator(self.params, self.services)

    def _judge(self, prompt: str, response: str) -> tuple[dict[str, int] | None, str]:
        from gpu_jobs.generate import GenerationError, GenParams

        p: LongBenchWriteParams = self.params
        tried = []
        for attempt in range(p.judge_asks):
            try:
                g = self._gen.generate_full(core.judge_prompt(prompt, response),
                                            GenParams(max_new_tokens=p.judge_tokens, temperature=p.temperature,
                                                      seed=self.seed + attempt))
            except GenerationError as e:
                return None, f"judge failed: {str(e)[:300]}"
            ratings = core.parse_judgement(g.text)
            if ratings is not None:
                return ratings, ""
            tried.append(g.finish_reason)
        return None, f"no parseable judgement in {p.judge_asks} tries ({', '.join(tried)})"

    def process(self, record: dict) -> Iterator[Outcome]:
        prompt, response, required = prediction_parts(record)
        if not prompt or response is None:
            yield Rejected(record["id"], "no request and response", "needs prompt and response, or messages")
            return
        produced = core.count_words(response)
        s_l = core.length_score(required, produced) if required and produced else (0.0 if required else None)
        sums: dict[str, float] = {"samples": 1}
        if s_l is not None:
            sums |= {"s_l_sum": s_l, "s_l_n": 1}
        ratings, why = (None, "length only") if self._gen is None else self._judge(prompt, response)
        if ratings is not None:
            sums["judged"] = 1
            sums |= {f"rating_sum:{d}": v for d, v in ratings.items()}
        elif self._gen is not None:
            sums["unjudged"] = 1
        yield Measured(sums)
        yield {**record, "required_length": required, "response_length": produced, "score_length": s_l,
               "ratings": json.dumps(ratings if ratings is not None else {"unjudged": why}, sort_keys=True)}

    def summarize_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        out = {"samples": sums.get("samples", 0), "judged": sums.get("judged", 0), "unjudged": sums.get("unjudged", 0)}
        if sums.get("s_l_n"):
            out["S_l"] = sums["s_l_sum"] / sums["s_l_n"]
        if sums.get("judged"):
            per = {d: (sums.get(f"rating_sum:{d}", 0) / sums["judged"] - 1) * 25 for d in core.JUDGE_DIMENSIONS}
            out |= {f"S_q:{d}": v for d, v in per.items()}
            out["S_q"] = sum(per.values()) / len(per)
            if "S_l" in out:
                out["S"] = core.overall_score(out["S_l"], out["S_q"])
        return out
