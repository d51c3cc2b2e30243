"""LongPO's training rows (spec ../shared/specs/longpo.md 2, 3.8, 3.10; issue 33, point 18): what a
LongPO trainer reads without more code, beside the conversational columns TRL's DPOTrainer reads.

``longpo_format`` applies the policy's chat template to every pair: the long multi-turn chosen and
rejected conversations (turn 1 = long context + question, later turns the question alone) as
``chosen_input_ids`` / ``rejected_input_ids`` with their attention masks and labels (-100 but on
the assistant's tokens: the prompt and every user turn masked), and the short per-turn chats the
reference model reads (user = the turn's chunk + question, assistant = the answer) as
``ref_chosen_input_ids`` / ``ref_rejected_input_ids`` (one list per turn, unpadded: padding is the
collator's) with their labels. The ``prompt`` / ``chosen`` / ``rejected`` messages stay, in TRL's
conversational form, so TRL's own tokenisation reads the same rows.

``longpo_reference`` runs the reference model (the original model, original RoPE: the paper's
short-to-long constraint is "reference conditioned on the short context") over the short chats and
stores each turn's summed log-probability of the answer tokens (``reference_chosen_logps``,
``reference_rejected_logps``, spec 3.10: a LongPO trainer sums them over turns). Stock TRL has no
use for them: its DPOTrainer computes its own reference on the long sequences (plain DPO), and its
precomputed mode adds columns named ``ref_chosen_logps`` itself, so the rows carry none of that name.

A turn's assistant tokens are found by prefix difference: the conversation up to that turn with
the generation prompt is a prefix of the conversation through the answer, and the tokens after it
are the answer's (its end-of-turn marker included), as TRL splits prompt and completion. Not made:
the reference's ``*_lm_labels`` (input ids with the role markers masked, for the NLL term); a
trainer takes the NLL over ``chosen_input_ids`` where ``chosen_attention_mask`` is 1."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator, Sequence

import pyarrow as pa
from pydantic import Field

from schemas import RecordSchema
from stages import register
from stages.base import Outcome, RecordStage, Rejected, Resources, StageParams
from stages.longpo.stages import LONGPO_PAIR

IGNORE = -100  # the label of a token no loss is taken on (PyTorch's cross-entropy ignore_index)
_IDS = pa.list_(pa.int32())
FORMAT_FIELDS = (
    pa.field("chosen_input_ids", _IDS), pa.field("chosen_attention_mask", pa.list_(pa.int8())),
    pa.field("chosen_labels", _IDS),
    pa.field("rejected_input_ids", _IDS), pa.field("rejected_attention_mask", pa.list_(pa.int8())),
    pa.field("rejected_labels", _IDS),
    pa.field("ref_chosen_input_ids", pa.list_(_IDS)), pa.field("ref_chosen_labels", pa.list_(_IDS)),
    pa.field("ref_rejected_input_ids", pa.list_(_IDS)), pa.field("ref_rejected_labels", pa.list_(_IDS)),
    pa.field("chat_template", pa.string()),  # JSON: tokenizer folder name, template hash
)
REFERENCE_FIELDS = (
    pa.field("reference_chosen_logps", pa.list_(pa.float64())),  # one per turn (spec 3.10)
    pa.field("reference_rejected_logps", pa.list_(pa.float64())),
    pa.field("reference_model", pa.string()),  # JSON: model, revision, RoPE
)


def conversation_tokens(tokenizer, messages: Sequence[dict]) -> tuple[list[int], list[int]]:
    """(input ids, labels) of a chat under the tokenizer's chat template; labels hold the ids of
    the assistant turns' tokens (found by prefix difference) and ``IGNORE`` everywhere else."""
    ids = _template(tokenizer, messages)
    labels = [IGNORE] * len(ids)
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _template(tokenizer, messages[:k], generation_prompt=True)
        through = _template(tokenizer, messages[:k + 1])
        if through != ids[:len(through)] or before != through[:len(before)]:
            raise ValueError("the chat template does not render a conversation's turns as prefixes of one "
                             "another; its assistant tokens cannot be found")
        labels[len(before):len(through)] = through[len(before):]
    return ids, labels


def _template(tokenizer, messages: Sequence[dict], generation_prompt: bool = False) -> list[int]:
    out = tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=generation_prompt,
                                        return_dict=False)
    return list(out["input_ids"] if isinstance(out, dict) else out)


class FormatParams(StageParams):
    model: str = Field("smollm2-135m", description="the policy whose tokenizer and chat template the rows use: "
                       "an alias, a folder, or a cached Hub id")
    max_length: int | None = Field(None, gt=0, description="a pair whose long chosen or rejected conversation "
                                   "is longer is rejected [off]")


@register
class LongPOFormat(RecordStage):
    """The pairs tokenised under the policy's chat template, with labels and the short chats."""

    name = "longpo_format"
    Params = FormatParams
    input_schema = LONGPO_PAIR

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return self.adding(upstream, "longpo_format", FORMAT_FIELDS)

    @functools.cached_property
    def _tokenizer(self):
        from transformers import AutoTokenizer

        from gpu_jobs.lm import resolve_causal_lm

        folder = resolve_causal_lm(self.params.model)
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        if not tok.chat_template:
            raise ValueError(f"{self.params.model}: its tokenizer has no chat template; give the chat model's "
                             "folder as model:")
        template = hashlib.sha256(tok.chat_template.encode()).hexdigest()[:16]
        self._template_json = json.dumps({"model": self.params.model, "template_sha256": template}, sort_keys=True)
        return tok

    def setup(self) -> None:
        _ = self._tokenizer

    def process(self, record: dict) -> Iterator[Outcome]:
        p: FormatParams = self.params
        tok = self._tokenizer
        try:
            yield self._format(record, tok, p)
        except ValueError as e:  # a chat template that does not render turns as prefixes: this pair only
            yield Rejected(record["id"], "chat template", str(e)[:500])

    def _format(self, record: dict, tok, p: FormatParams) -> Outcome:
        out = dict(record)
        for side in ("chosen", "rejected"):
            ids, labels = conversation_tokens(tok, list(record["prompt"]) + list(record[side]))
            if p.max_length is not None and len(ids) > p.max_length:
                return Rejected(record["id"], "too long", f"{side}: {len(ids)} tokens > max_length {p.max_length}")
            out |= {f"{side}_input_ids": ids, f"{side}_attention_mask": [1] * len(ids), f"{side}_labels": labels}
            answers = record["chosens"] if side == "chosen" else record["rejecteds"]
            short = [conversation_tokens(tok, [{"role": "user", "content": prompt},
                                               {"role": "assistant", "content": answer}])
                     for prompt, answer in zip(record["short_prompts"], answers, strict=True)]
            out |= {f"ref_{side}_input_ids": [s[0] for s in short], f"ref_{side}_labels": [s[1] for s in short]}
        out["chat_template"] = self._template_json
        return out


class ReferenceParams(StageParams):
    model: str = Field("smollm2-135m", description="the reference model: the original policy, original RoPE "
                       "[spec 3.10]")
    device: str = Field("auto", description="auto, cpu or cuda")
    batch_records: int = Field(4, gt=0, description="pairs per checkpointed batch")


@register
class LongPOReference(RecordStage):
    """Each turn's reference log-probability of its chosen and rejected answer given the short
    context, and their sums over turns (the trainer's precomputed reference)."""

    name = "longpo_reference"
    Params = ReferenceParams
    input_schema = LONGPO_PAIR.extended("longpo_format", 1, FORMAT_FIELDS)

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return self.adding(upstream, "longpo_reference", REFERENCE_FIELDS)

    def resources(self) -> Resources:
        p: ReferenceParams = self.params
        return Resources(batch_size=p.batch_records, device=p.device, model=True)

    def setup(self) -> None:
        from gpu_jobs.lm import load_causal_lm

        self._lm = load_causal_lm(self.params.model, device=self.params.device)
        self._model_json = json.dumps({"model": self.params.model, "revision": self._lm.revision, "rope": None},
                                      sort_keys=True)

    def process_batch(self, records: list[dict]) -> list[list[Outcome]]:
        from gpu_jobs.scoring import labelled_logps

        out = []
        for r in records:
            chosen = labelled_logps(self._lm, r["ref_chosen_input_ids"], r["ref_chosen_labels"])
            rejected = labelled_logps(self._lm, r["ref_rejected_input_ids"], r["ref_rejected_labels"])
            out.append([{**r, "reference_chosen_logps": chosen, "reference_rejected_logps": rejected,
                         "reference_model": self._model_json}])
        return out

    def process(self, record: dict) -> Iterator[Outcome]:
        yield from self.process_batch([record])[0]
