"""LongPO short-to-long preference pairs as a stage (spec ../shared/specs/longpo.md): one long
document in, one multi-turn pair record out, on the runner's workers. Per document: chunks in a
token band; for up to ``max_chunks`` of them, questions from the chunk alone and one of them picked;
the **chosen** answer from the chunk (short context); for up to ``n_turns`` of those, the
**rejected** answer from the whole long context by the same model, configured for the long window;
then the pair filters. The pure parts are in :mod:`stages.longpo.core`."""

from __future__ import annotations

import functools
import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterator
from typing import Literal

import pyarrow as pa
from pydantic import Field, model_validator

from schemas import MESSAGE, REGISTRY, RecordSchema
from stages import register
from stages.base import Dropped, Measured, Outcome, RecordStage, Rejected, Resources, TokenizerRef
from stages.blocks.generation import GeneratorParams, open_generator, refused, with_call_counts
from stages.longpo import core

LONGPO_PAIR = REGISTRY.register(RecordSchema("longpo_pair", 1, (
    pa.field("id", pa.string(), nullable=False),  # the document's id
    # TRL's conversational preference format: the first user turn holds the long context and question 1;
    # chosen and rejected continue it (answer 1, question 2, answer 2, ...)
    pa.field("prompt", pa.list_(MESSAGE)),
    pa.field("chosen", pa.list_(MESSAGE)),
    pa.field("rejected", pa.list_(MESSAGE)),
    # LongPO's reference side: one short chat per turn (chunk k, then question k), as the trainer needs
    pa.field("short_prompts", pa.list_(pa.string())),
    pa.field("questions", pa.list_(pa.string())),  # lead-in included
    pa.field("chosens", pa.list_(pa.string())),
    pa.field("rejecteds", pa.list_(pa.string())),
    pa.field("chunk_indices", pa.list_(pa.int64())),  # each turn's chunk among the document's chunks
    pa.field("long_context", pa.string()),  # the chunks joined: not the original text (spec 5)
    pa.field("long_tokens", pa.int64()),
    pa.field("short_tokens", pa.list_(pa.int64())),
    pa.field("n_turns", pa.int32()),
    pa.field("chunks_left_out", pa.int32()),  # leading chunks cut to fit target_len (left truncation)
    pa.field("domain", pa.string()),
    pa.field("source", pa.string()),
    pa.field("generator", pa.string()),  # JSON: models, RoPE, sampling, prompt version
), doc="A LongPO multi-turn preference pair: chosen from short chunks, rejected from the long document."))


class LongPOParams(GeneratorParams):
    model: str = Field("smollm2-135m", description="pi_S, the short-context chat model that writes questions "
                       "and both answers [paper: Mistral-7B-Instruct-v0.2]")
    long_model: str | None = Field(None, description="openai backend: the served name of the same model started "
                                   "with the long window (RoPE override) [default: model]")
    long_base_url: str | None = Field(None, description="openai backend: the server of long_model [default: base_url]")
    long_rope: Literal["none", "linear", "dynamic", "yarn"] = Field(
        "none", description="local backend: the RoPE extension of the long answers [paper: theta raised]")
    long_rope_factor: float | None = Field(None, gt=1, description="the long window over the trained one")
    tokenizer: TokenizerRef = Field("smollm2", description="counts chunk and context tokens: the generator's tokenizer "
                           "(a name or a tokenizer.json)")
    domain: Literal["book", "arxiv", "code"] = Field("book", description="paragraph rule when a record has no "
                                                     "`domain`: blank lines (book, code) or LaTeX headings (arxiv)")
    min_chunk_tokens: int = Field(16384, gt=0, description="[code: 16,384]")
    max_chunk_tokens: int = Field(30000, gt=0, description="[code: 30,000]")
    min_document_tokens: int = Field(65536, ge=0, description="shorter documents are dropped [paper: 64K]")
    target_len: int = Field(131072, gt=0, description="the long prompt and its answer fit this many tokens "
                            "[paper round 1: 128K]")
    overflow: Literal["truncate_left", "drop"] = Field(
        "truncate_left", description="a long context over target_len: leading chunks left out (the question is "
        "never cut), or the document dropped [the reference pre-filters to documents under the target]")
    max_short_tokens: int = Field(32768, gt=0, description="a short prompt (chunk and question) longer is dropped "
                                  "[code: 32,768]")
    template_tokens: int = Field(64, ge=0, description="tokens kept for the chat template around a prompt")
    question_room: int = Field(128, ge=0, description="tokens kept for the question when the long context is cut "
                               "to target_len; a longer question drops its turn, never cut [ours]")
    max_chunks: int = Field(4, gt=0, description="chunks asked for questions per document, sampled [paper: 4]")
    n_turns: int = Field(4, gt=0, description="turns kept per document, sampled [paper: up to 4; code: 2]")
    n_questions: int = Field(4, gt=0, description="questions a reply must list exactly [code: 4]")
    question_asks: int = Field(1, ge=1, description="question calls (another seed each) before a chunk without "
                               "exactly n_questions is left out [code: 1]")
    question_tokens: int = Field(1024, gt=0, description="[code: 1,024]")
    question_temperature: float = Field(0.7, ge=0, description="[code: 0.7]")
    question_top_p: float = Field(0.9, gt=0, le=1, description="[code: 0.9]")
    answer_tokens: int = Field(1024, gt=0, description="chosen and rejected [code: 1,024]")
    answer_temperature: float = Field(0.0, ge=0, description="[paper: greedy (0); code: 1.0]")
    answer_top_p: float = Field(1.0, gt=0, le=1, description="[code: 1.0]")
    keep_cut_answers: bool = Field(False, description="keep answers cut by answer_tokens [code: kept; ours: "
                                   "a cut answer is no answer]")
    min_ratio: float = Field(2.0, ge=1, description="long tokens over short tokens, at least, per turn "
                             "[spec 5, ours]")
    max_repeat_chosen: float = Field(0.90, gt=0, le=1, description="[code: 0.90]")
    max_repeat_rejected: float = Field(0.95, gt=0, le=1, description="[code: 0.95]")
    refusal_phrases: tuple[str, ...] = Field(core.REFUSAL_PHRASES, description="answers holding one are dropped "
                                             "(case-insensitive) [ours; the code's list has ~37]")
    refusal_match: Literal["declining", "anywhere"] = Field(
        "declining", description="what a refused answer is: 'declining' = the model declining where its answer "
        "starts, outside quotes (refusal_patterns; the phrase list is not read) [ours, issue 33]; 'anywhere' = a "
        "phrase of refusal_phrases anywhere in the answer [code, spec 3.6]")
    batch_records: int = Field(1, gt=0, description="documents per checkpointed batch")

    @model_validator(mode="after")
    def _consistent(self):
        if self.min_chunk_tokens > self.max_chunk_tokens:
            raise ValueError(f"min_chunk_tokens {self.min_chunk_tokens} is above max_chunk_tokens "
                             f"{self.max_chunk_tokens}")
        if (self.long_rope == "none") != (self.long_rope_factor is None):
            raise ValueError("long_rope and long_rope_factor go together (e.g. long_rope: dynamic, "
                             "long_rope_factor: 4)")
        if self.long_rope != "none" and self.backend != "local":
            raise ValueError("long_rope applies to the local backend; with openai, serve the long model with its "
                             "RoPE override and name it in long_model / long_base_url")
        return self


def _rng(seed: int, key: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(f"longpo:{seed}:{key}".encode()).digest()[:8], "big"))


class _Stop(Exception):
    """A call failed: the document is rejected with this reason (a failure is never saved as data)."""


@register
class LongPOPairs(RecordStage):
    """Spec 3.2-3.7 per document: chunk, ask, answer short (chosen), answer long (rejected), filter.
    Every call goes through the run's generation cache, so a rerun pays for no finished call; a
    failed call rejects the document, an answer that fails the filters drops its turn."""

    name = "longpo_pairs"
    Params = LongPOParams
    input_schema = RecordSchema("long_document", 1, (pa.field("id", pa.string(), nullable=False),
                                                     pa.field("text", pa.string())))
    uses_generations = True

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return LONGPO_PAIR

    def resources(self) -> Resources:
        return Resources(batch_size=self.params.batch_records, device=self.params.device, model=True)

    def setup(self) -> None:
        p: LongPOParams = self.params
        self._short = open_generator(p, self.services)
        if p.long_rope != "none":
            from gpu_jobs.lm import RopeExtension

            self._long = open_generator(p, self.services, rope=RopeExtension(p.long_rope, p.long_rope_factor))
        elif p.long_model or p.long_base_url:
            self._long = open_generator(p, self.services, model=p.long_model, base_url=p.long_base_url)
        else:
            self._long = self._short

    @functools.cached_property
    def _tok(self):
        from gpu_jobs.models import load_tokenizer

        return load_tokenizer(self.params.tokenizer)

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    @functools.cached_property
    def _generator_meta(self) -> str:
        p: LongPOParams = self.params
        return json.dumps({
            "model": p.model, "backend": p.backend, "long_model": getattr(self._long, "model", p.long_model or p.model),
            "long_rope": None if p.long_rope == "none" else {"kind": p.long_rope, "factor": p.long_rope_factor},
            "questions": {"temperature": p.question_temperature, "top_p": p.question_top_p,
                          "max_tokens": p.question_tokens},
            "answers": {"temperature": p.answer_temperature, "top_p": p.answer_top_p, "max_tokens": p.answer_tokens},
            "target_len": p.target_len, "chunk_band": [p.min_chunk_tokens, p.max_chunk_tokens],
            "prompt_version": core.PROMPT_VERSION, "seed": self.seed}, sort_keys=True)

    def _generate(self, gen, messages: list[dict], max_new_tokens: int, temperature: float, top_p: float,
                  seed: int, what: str):
        from gpu_jobs.generate import GenerationError, GenParams

        try:
            return gen.generate_full(messages, GenParams(max_new_tokens=max_new_tokens, temperature=temperature,
                                                         top_p=top_p, seed=seed))
        except GenerationError as e:
            raise _Stop(f"{what}: {str(e)[:400]}") from None

    def _answer(self, gen, context: str, question: str, what: str, max_repeat: float) -> tuple[str | None, str]:
        """(answer, "") or (None, why the turn goes)."""
        p: LongPOParams = self.params
        g = self._generate(gen, core.answer_prompt(context, question), p.answer_tokens, p.answer_temperature,
                           p.answer_top_p, self.seed, what)
        why = refused(g, p.refusal_patterns)
        if why:
            return None, f"{what.split()[0]} refused"
        if g.finish_reason == "length" and not p.keep_cut_answers:
            return None, f"{what.split()[0]} cut by answer_tokens"
        problem = core.answer_problem(g.text, max_repeat, phrases=p.refusal_phrases, match=p.refusal_match,
                                      patterns=p.refusal_patterns)
        if problem:
            return None, f"{what.split()[0]} {problem[0]}"
        return g.text.strip(), ""

    def _question(self, chunk: core.Chunk, rng: random.Random, dropped: Counter) -> str | None:
        p: LongPOParams = self.params
        for attempt in range(p.question_asks):
            g = self._generate(self._short, core.question_prompt(chunk.text, p.n_questions), p.question_tokens,
                               p.question_temperature, p.question_top_p, self.seed + attempt,
                               f"questions of chunk {chunk.index}")
            if refused(g, p.refusal_patterns):
                continue
            questions = core.parse_questions(g.text)
            if len(questions) == p.n_questions:
                lead_in = core.LEAD_INS[rng.randrange(len(core.LEAD_INS))]
                return core.with_lead_in(lead_in, questions[rng.randrange(len(questions))])
        dropped[f"chunk without exactly {p.n_questions} questions"] += 1
        return None

    def process(self, record: dict) -> Iterator[Outcome]:
        return with_call_counts(self._guarded(record), self._short, self._long)

    def _guarded(self, record: dict) -> Iterator[Outcome]:
        try:
            yield from self._pairs(record)
        except _Stop as e:
            yield Rejected(record["id"], "generation failed", str(e))

    def _pairs(self, record: dict) -> Iterator[Outcome]:
        p: LongPOParams = self.params
        rid, text = record["id"], record.get("text")
        if not isinstance(text, str) or not text.strip():
            yield Rejected(rid, "empty document", "'text' is empty or missing")
            return
        domain = record.get("domain") or p.domain
        if domain not in ("book", "arxiv", "code"):
            yield Rejected(rid, "unknown domain", f"domain {domain!r}: one of book, arxiv, code")
            return
        joiner = "\n" if domain == "arxiv" else "\n\n"
        pieces, seps = core.split_long(core.paragraphs(text, domain), self.count, p.max_chunk_tokens, joiner)
        chunking = core.chunk_document(pieces, self.count, p.min_chunk_tokens, p.max_chunk_tokens, seps=seps)
        if chunking.document_tokens < p.min_document_tokens:
            yield Dropped(rid, "shorter than min_document_tokens",
                          f"{chunking.document_tokens} < {p.min_document_tokens} tokens")
            return
        chunks = chunking.chunks
        # the long prompt: context, separator, question (<= its budget), template; the answer after it
        budget = p.target_len - p.answer_tokens - p.template_tokens - p.question_room
        left_out = core.fit_from_left(chunks, budget, self.count)
        if left_out and p.overflow == "drop":
            yield Dropped(rid, "longer than target_len", f"the long context leaves no room in {p.target_len} tokens "
                          f"for a question and a {p.answer_tokens}-token answer (overflow: drop)")
            return
        chunks = chunks[left_out:]
        if len(chunks) < 2:
            yield Dropped(rid, "fewer than 2 chunks", f"{len(chunking.chunks)} chunks in [{p.min_chunk_tokens}, "
                          f"{p.max_chunk_tokens}] tokens, {left_out} left out for target_len")
            return
        long_ctx = core.long_context(chunks)
        long_tokens = self.count(long_ctx)
        rng = _rng(self.seed, rid)
        asked = sorted(rng.sample(chunks, min(p.max_chunks, len(chunks))), key=lambda c: c.index)
        dropped: Counter = Counter()
        answered = self._short_turns(asked, long_tokens, rng, dropped)  # (chunk, question, chosen)
        # grouping (spec 3.5): the turn's chunk is in the long context and its question has a lead-in
        grouped = [t for t in answered if t[0].text[:100] in long_ctx and t[1].startswith(core.LEAD_INS)]
        kept = sorted(rng.sample(grouped, min(p.n_turns, len(grouped))), key=lambda t: t[0].index)
        turns = []
        for chunk, question, chosen in kept:
            if long_tokens + self.count(question) + p.template_tokens + p.answer_tokens + 2 > p.target_len:
                dropped["long prompt over target_len"] += 1  # never cut: the question ends the prompt
                continue
            rejected, why = self._answer(self._long, long_ctx, question, f"rejected of chunk {chunk.index}",
                                         p.max_repeat_rejected)
            if rejected is None:
                dropped[why] += 1
                continue
            turns.append((chunk, question, chosen, rejected))
        yield Measured({"documents": 1, "chunks": len(chunking.chunks), "chunks_asked": len(asked),
                        "chunks_lost_to_band": chunking.lost_groups, "chunks_left_out": left_out,
                        "turns_answered": len(answered), "turns": len(turns),
                        **{f"turn dropped: {k}": v for k, v in dropped.items()}})
        if not turns:
            yield Dropped(rid, "no pair left", "; ".join(f"{k} x{v}" for k, v in sorted(dropped.items()))
                          or "no turn")
            return
        yield self._pair(record, turns, long_ctx, long_tokens, left_out, domain)

    def _short_turns(self, asked: list, long_tokens: int, rng, dropped: Counter) -> list[tuple]:
        """(chunk, question, chosen answer) for each asked chunk that yields a question and a usable
        answer from the short context, in document order; what is lost is counted in ``dropped``."""
        p: LongPOParams = self.params
        answered = []
        for chunk in asked:
            question = self._question(chunk, rng, dropped)
            if question is None:
                continue
            short_tokens = self.count(chunk.text) + self.count(question) + p.template_tokens
            if short_tokens > p.max_short_tokens:
                dropped["short prompt over max_short_tokens"] += 1
                continue
            if long_tokens < p.min_ratio * self.count(chunk.text):
                dropped[f"long/short ratio below {p.min_ratio:g}"] += 1
                continue
            chosen, why = self._answer(self._short, chunk.text, question, f"chosen of chunk {chunk.index}",
                                       p.max_repeat_chosen)
            if chosen is None:
                dropped[why] += 1
                continue
            answered.append((chunk, question, chosen))
        return answered

    def _pair(self, record: dict, turns: list[tuple], long_ctx: str, long_tokens: int, left_out: int,
              domain: str) -> dict:
        """The multi-turn pair: the first question after the long context, each later one a turn of
        its own; chosen answers from the short contexts, rejected ones from the long."""
        first = turns[0]
        prompt = [{"role": "user", "content": long_ctx + core.CONTEXT_SEPARATOR + first[1]}]
        chosen_msgs, rejected_msgs = [], []
        for k, (_, question, chosen, rejected) in enumerate(turns):
            if k:
                chosen_msgs.append({"role": "user", "content": question})
                rejected_msgs.append({"role": "user", "content": question})
            chosen_msgs.append({"role": "assistant", "content": chosen})
            rejected_msgs.append({"role": "assistant", "content": rejected})
        return {"id": record["id"], "prompt": prompt, "chosen": chosen_msgs, "rejected": rejected_msgs,
                "short_prompts": [c.text + core.CONTEXT_SEPARATOR + q for c, q, _, _ in turns],
                "questions": [q for _, q, _, _ in turns], "chosens": [c for _, _, c, _ in turns],
                "rejecteds": [r for _, _, _, r in turns], "chunk_indices": [c.index for c, *_ in turns],
                "long_context": long_ctx, "long_tokens": long_tokens,
                "short_tokens": [self.count(c.text + core.CONTEXT_SEPARATOR + q) for c, q, _, _ in turns],
                "n_turns": len(turns), "chunks_left_out": left_out, "domain": domain,
                "source": record.get("source"), "generator": self._generator_meta}
