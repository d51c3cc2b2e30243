"""LongPO's training rows (issue 33, point 18; spec longpo.md 2, 3.8, 3.10): TRL's DPOTrainer reads
the rows with its own tokenisation and gets the same sequences, the labels mask all but the
assistant's tokens, and the reference log-probabilities reproduce a direct computation.

The pair stands in for what ``longpo_pairs`` writes (its generation is tested elsewhere): the
contexts are real essay text, the questions and answers written here."""

from __future__ import annotations

import pytest

from stages.longpo import core
from stages.longpo.train import IGNORE, LongPOFormat, LongPOReference


def _pair(real_docs) -> dict:
    essay = max((d for d in real_docs if d["source"] == "paul_graham"), key=lambda d: len(d["text"]))["text"]
    chunks = [essay[:1500], essay[1500:3000]]
    long_ctx = core.CHUNK_SEPARATOR.join(chunks)
    questions = ["Based on the preceding text, what does the author say first?",
                 "According to the text above, how does the essay go on?"]
    chosens = ["The author opens with a claim about startups and backs it with an example.",
               "It goes on to explain why the claim holds for small companies."]
    rejecteds = ["The text does not say.", "It talks about something else entirely."]
    prompt = [{"role": "user", "content": long_ctx + core.CONTEXT_SEPARATOR + questions[0]}]
    chosen = [{"role": "assistant", "content": chosens[0]}, {"role": "user", "content": questions[1]},
              {"role": "assistant", "content": chosens[1]}]
    rejected = [{"role": "assistant", "content": rejecteds[0]}, {"role": "user", "content": questions[1]},
                {"role": "assistant", "content": rejecteds[1]}]
    return {"id": "essay", "prompt": prompt, "chosen": chosen, "rejected": rejected,
            "short_prompts": [c + core.CONTEXT_SEPARATOR + q for c, q in zip(chunks, questions, strict=True)],
            "questions": questions, "chosens": chosens, "rejecteds": rejecteds, "chunk_indices": [0, 1],
            "long_context": long_ctx, "n_turns": 2}


@pytest.fixture(scope="module")
def rows(real_docs):
    fmt = LongPOFormat(LongPOFormat.Params(), seed=0)
    fmt.setup()
    (formatted,) = list(fmt.process(_pair(real_docs)))
    ref = LongPOReference(LongPOReference.Params(device="cpu"), seed=0)
    ref.setup()
    (done,) = ref.process_batch([formatted])[0]
    return done


@pytest.fixture(scope="module")
def lm():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gpu_jobs.lm import resolve_causal_lm

    folder = resolve_causal_lm("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True).eval()
    return model, AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _ids(tok, messages, generation_prompt=False) -> list[int]:
    out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt, return_dict=True)
    return list(out["input_ids"])


def test_labels_hold_exactly_the_assistant_answers(rows, lm):
    _, tok = lm
    for side in ("chosen", "rejected"):
        ids, labels = rows[f"{side}_input_ids"], rows[f"{side}_labels"]
        assert len(ids) == len(labels) == len(rows[f"{side}_attention_mask"])
        kept = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE])
        answers = rows[f"{side}s"]
        # the answers, each with its end-of-turn marker, and nothing of the prompt or the user turns
        assert kept == "".join(f"{a}<|im_end|>\n" for a in answers)
        assert all(lab in (IGNORE, t) for t, lab in zip(ids, labels, strict=True))
        for k, short in enumerate(rows[f"ref_{side}_labels"]):
            kept = tok.decode([t for t, lab in zip(rows[f"ref_{side}_input_ids"][k], short, strict=True)
                               if lab != IGNORE])
            assert kept == f"{answers[k]}<|im_end|>\n"
            assert rows["short_prompts"][k] in tok.decode(rows[f"ref_{side}_input_ids"][k])


def test_the_reference_logps_reproduce_a_direct_computation(rows, lm):
    """Apart from the stage's code: the answer's tokens are what follows the prompt rendered with its
    generation prompt, and their log-probabilities come from one plain forward pass."""
    import torch

    model, tok = lm
    for side in ("chosen", "rejected"):
        direct = []
        for prompt, answer in zip(rows["short_prompts"], rows[f"{side}s"], strict=True):
            head = _ids(tok, [{"role": "user", "content": prompt}], generation_prompt=True)
            full = _ids(tok, [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}])
            with torch.no_grad():
                logits = model(torch.tensor([full])).logits[0].double()
            logp = torch.log_softmax(logits[:-1], dim=-1)
            direct.append(sum(float(logp[i - 1, full[i]]) for i in range(len(head), len(full))))
        assert rows[f"reference_{side}_logps"] == pytest.approx(direct, abs=1e-4)
        assert all(x < 0 for x in rows[f"reference_{side}_logps"])
    assert not {"ref_chosen_logps", "ref_rejected_logps"} & set(rows)  # names TRL's precomputed mode adds


def test_trl_dpo_trainer_reads_the_rows_with_its_own_tokenisation(rows, lm, tmp_path):
    """TRL's data path (DPOTrainer's dataset preparation, its own tokenisation of the conversational
    ``prompt`` / ``chosen`` / ``rejected``) on the rows as written: its prompt + completion ids are the
    rows' ids and the rows' labels fall inside its completion. (Stock TRL computes its own reference
    on the long sequences; the rows' short-context reference log-probs are for a LongPO trainer.)"""
    import datasets
    from trl import DPOConfig, DPOTrainer

    model, tok = lm
    ds = datasets.Dataset.from_list([{k: rows[k] for k in ("prompt", "chosen", "rejected")}])
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), report_to=[], per_device_train_batch_size=1, use_cpu=True,
                     dataset_num_proc=None)
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    got = trainer.train_dataset[0]
    for side in ("chosen", "rejected"):
        assert got["prompt_ids"] + got[f"{side}_ids"] == rows[f"{side}_input_ids"]
        first = next(i for i, lab in enumerate(rows[f"{side}_labels"]) if lab != IGNORE)
        assert first >= len(got["prompt_ids"])  # nothing of the prompt is trained on
    batch = trainer.data_collator([got])
    assert batch["input_ids"].shape[0] == 2  # chosen and rejected, as TRL's loss reads them


def test_a_template_that_does_not_render_turns_as_prefixes_rejects_the_pair_only(rows, lm, real_docs):
    """A template that writes something into the last assistant turn only (as Qwen3's writes an empty
    think block) cannot show where each answer's tokens are: the pair is rejected, the run goes on."""
    from stages.base import Rejected

    _, tok = lm

    class LastTurnMarked:
        chat_template = tok.chat_template

        def apply_chat_template(self, messages, **kw):
            ids = tok.apply_chat_template(messages, **kw)
            ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
            return ids + [0] if messages and messages[-1]["role"] == "assistant" else ids

    fmt = LongPOFormat(LongPOFormat.Params(), seed=0)
    fmt.__dict__["_tokenizer"] = LastTurnMarked()
    fmt._template_json = "{}"
    (out,) = list(fmt.process(_pair(real_docs)))
    assert isinstance(out, Rejected) and out.reason == "chat template"
