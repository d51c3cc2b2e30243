"""LongAlign, spec longalign.md section 6: loss-weight equivalence, packing, sorted batching, chat
labels (SmolLM2's real chat template), and self-instruct with a scripted generator standing in for
an LLM (the real model runs in tests/pipelines/test_longalign_pipeline.py)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from tokenizers import Tokenizer

from gpu_jobs.models import tokenizer_path
from stages.longalign import core
from tests.conftest import read_as_stream


def _rows(n: int, seed: int = 0, lo: int = 20, hi: int = 900):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(lo, hi, n).tolist()
    labels = []
    for n_tok in lengths:
        lab = [-100] * n_tok
        start = int(rng.integers(1, n_tok))
        for t in range(start, n_tok):
            lab[t] = int(rng.integers(0, 1000))
        labels.append(lab)
    return lengths, labels


def test_loss_weights_give_every_sequence_equal_weight():
    """Spec 3.4: sum over packs of sum_t w_t (K / M) l_t, over K, equals (1/M) sum_i mean-loss_i."""
    lengths, labels = _rows(60, seed=1)
    L, K = 2048, 4
    packs, skipped = core.pack_next_fit(lengths, L)
    assert not skipped
    rng = np.random.default_rng(2)
    losses = [rng.random(n) * 5 for n in lengths]  # per-token losses of each sequence
    for g in range(0, len(packs), K):
        group = packs[g:g + K]
        M = sum(len(p.rows) for p in group)
        weighted = naive = 0.0
        for p in group:
            w = core.pack_weights(labels, p, L, dtype=np.float64)
            assert np.allclose(core.pack_weights(labels, p, L), w, rtol=1e-7, atol=0)  # the stored float32
            flat_loss = np.zeros(L)
            flat_mask = np.zeros(L, dtype=bool)
            at = 0
            for i in p.rows:
                flat_loss[at:at + lengths[i]] = losses[i]
                flat_mask[at:at + lengths[i]] = np.asarray(labels[i]) != -100
                at += lengths[i]
            weighted += float((w * (len(group) / M) * flat_loss).sum())
            naive += float(flat_loss[flat_mask].mean())
        target = sum(float(losses[i][np.asarray(labels[i]) != -100].mean()) for p in group for i in p.rows) / M
        assert weighted / len(group) == pytest.approx(target, rel=1e-9, abs=1e-12)
        assert abs(naive / len(group) - target) > 1e-4  # plain per-pack averaging is biased


def test_packs_hold_every_row_once_within_capacity_and_keep_the_last_partial_pack():
    lengths, labels = _rows(200, seed=3)
    lengths.append(5000)  # longer than any pack
    labels.append([1] * 5000)
    L = 4096
    packs, skipped = core.pack_next_fit(lengths, L)
    assert skipped == [200]
    members = [i for p in packs for i in p.rows]
    assert sorted(members) == list(range(200)) and len(members) == len(set(members))
    for p in packs:
        cu = p.cu_seqlens
        assert cu[0] == 0 and cu[-1] == L and all(a < b for a, b in zip(cu, cu[1:], strict=False))
        assert sum(lengths[i] for i in p.rows) <= L
        w = core.pack_weights(labels, p, L)
        assert w.sum() == pytest.approx(len(p.rows), rel=1e-5)
        at = 0
        for i in p.rows:
            seg = w[at:at + lengths[i]]
            assert seg.sum() == pytest.approx(1.0, rel=1e-5)
            assert (seg[np.asarray(labels[i]) == -100] == 0).all()
            at += lengths[i]
        assert (w[at:] == 0).all()
    assert sum(lengths[i] for i in packs[-1].rows) < L  # the last, partial pack is there


def test_sorted_batches_group_lengths_and_shuffle_only_the_group_order():
    lengths = np.random.default_rng(4).integers(10, 5000, 103).tolist()
    a, rest_a = core.sorted_batches(lengths, 8, seed=0)
    b, rest_b = core.sorted_batches(lengths, 8, seed=1)
    assert len(a) == 12 and len(rest_a) == 7 and rest_a == rest_b
    assert Counter(i for g in a for i in g) + Counter(rest_a) == Counter(range(103))
    for g in a:
        assert [lengths[i] for i in g] == sorted(lengths[i] for i in g)
    spans = sorted((min(lengths[i] for i in g), max(lengths[i] for i in g)) for g in a)
    assert all(hi <= lo2 for (_, hi), (lo2, _) in zip(spans, spans[1:], strict=False))  # groups do not overlap
    assert [sorted(g) for g in a] != [sorted(g) for g in b] and sorted(map(sorted, a)) == sorted(map(sorted, b))


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from gpu_jobs.lm import resolve_causal_lm

    return AutoTokenizer.from_pretrained(str(resolve_causal_lm("smollm2-135m")), local_files_only=True)


def test_chat_labels_cover_assistant_turns_only(tokenizer):
    msgs = [{"role": "user", "content": "A long document.\n\nWhat is it?"},
            {"role": "assistant", "content": "A doc\u200bument."},
            {"role": "user", "content": "And then?"}, {"role": "assistant", "content": "Nothing more."},
            {"role": "user", "content": "unpaired, dropped"}]
    t = core.tokenize_chat(tokenizer, msgs)
    learned = tokenizer.decode([x for x in t.labels if x != -100])
    assert "A document." in learned and "Nothing more." in learned and "\u200b" not in learned
    assert "What is it" not in learned and "unpaired" not in tokenizer.decode(t.input_ids)
    assert learned.count("<|im_end|>") == 2  # each assistant turn's closing token is learned
    assert core.apply_overflow(t, 10, "skip") is None
    right = core.apply_overflow(t, len(t.input_ids) - 3, "truncate_right")
    assert right.input_ids == t.input_ids[:-3] and right.labels == t.labels[:-3]


class ScriptedGenerator:
    """Stands in for an LLM: a numbered question list for question prompts, a fixed answer otherwise."""

    model = "scripted"

    def __init__(self):
        self.calls = []  # the params of every call

    def generate_full(self, messages, params):
        from gpu_jobs.generate import Generation

        self.calls.append(params)
        content = messages[-1]["content"]
        if "write 5 questions" in content or "写出5个问题" in content:
            if "UNPARSEABLE" in content:
                return Generation("garbled")
            # FEW: three questions when greedy, five when sampled; ALWAYS-FEW: three whatever is asked
            n = 3 if "ALWAYS-FEW" in content or ("FEW" in content and params.temperature == 0) else 5
            return Generation("\n".join(f"{k}: Question {k} about it?" for k in range(1, n + 1)))
        return Generation("An answer.")


def test_self_instruct_builds_rows_and_drops_what_it_cannot_parse(monkeypatch):
    from stages.base import Dropped, SideRow
    from stages.longalign.stages import SelfInstruct

    def run(stage):
        stage._gen = ScriptedGenerator()  # stands in for the model setup() would load
        return stage.process_batch([{"id": "a", "text": "Doc A " * 50}, {"id": "b", "text": "Doc B UNPARSEABLE " * 50},
                                    {"id": "c", "text": "Doc C " * 50}])

    outcomes = run(SelfInstruct(SelfInstruct.Params(), seed=0))
    rows = [o for outs in outcomes for o in outs if isinstance(o, dict)]
    sides = [o.row for outs in outcomes for o in outs if isinstance(o, SideRow)]
    dropped = [o.record_id for outs in outcomes for o in outs if isinstance(o, Dropped)]
    assert [r["id"] for r in rows] == ["a#q", "c#q"] and dropped == ["b"] and sides == rows  # the messages table
    for r in rows:
        assert r["task_type"] in core.TASK_TYPES and r["question"].startswith("Question ")
        assert r["messages"][0]["content"].endswith(r["question"]) and r["messages"][1]["content"] == "An answer."
        tok = Tokenizer.from_file(str(tokenizer_path("smollm2")))
        assert r["length"] == sum(len(tok.encode(m["content"], add_special_tokens=False).ids) for m in r["messages"])
    assert run(SelfInstruct(SelfInstruct.Params(), seed=0)) == outcomes  # deterministic


def test_a_short_question_list_is_asked_again_by_sampling_then_dropped():
    """Spec 3.1: fewer than five questions -> re-ask or drop. A re-ask at temperature 0 would repeat
    the same call, so re-asks sample (another seed, reask_temperature)."""
    from stages.base import Dropped
    from stages.longalign.stages import SelfInstruct
    from tests.conftest import decisions

    stage = SelfInstruct(SelfInstruct.Params(asks=3), seed=7)
    stage._gen = ScriptedGenerator()
    (_, row), = [decisions(stage.process_batch([{"id": "few", "text": "Doc FEW " * 50}])[0])]  # (side row, row)
    first, second = stage._gen.calls[:2]
    assert (first.temperature, first.seed) == (0.0, 7) and (second.temperature, second.seed) == (0.7, 8)
    assert row["id"] == "few#q" and len(stage._gen.calls) == 3  # two question calls, one answer
    stage._gen = ScriptedGenerator()
    (out,) = decisions(stage.process_batch([{"id": "never", "text": "Doc ALWAYS-FEW " * 50}])[0])
    assert isinstance(out, Dropped) and out.reason == "fewer than 5 questions" and len(stage._gen.calls) == 3
    assert out.detail.count("3 questions") == 3


def test_refusals_are_recognised():
    from stages.longalign.stages import SelfInstruct

    stage = SelfInstruct(SelfInstruct.Params())
    for text in ("I'm sorry, but I can't help with that.", "Sorry, I cannot do that.",
                 "As an AI language model, I cannot answer.", "I cannot assist with this request."):
        assert stage._refused(text), text
    for text in ("The essay argues that startups grow.", "Sorry is a word the author uses twice."):
        assert not stage._refused(text), text


def test_chinese_documents_get_the_translated_prompt():
    from stages.longalign.stages import SelfInstruct
    from tests.conftest import decisions

    stage = SelfInstruct(SelfInstruct.Params(), seed=0)
    stage._gen = ScriptedGenerator()
    (_, row), = [decisions(stage.process_batch([{"id": "zh", "text": "人民日报 " * 80, "language": "zh"}])[0])]
    asked = core.question_prompt("文本", "summary", "zh")[0]["content"]
    assert "写出5个问题" in asked and "总结" in asked and "Given the text" not in asked
    assert "Given the text" in core.question_prompt("text", "summary", "en")[0]["content"]
    assert row["language"] == "zh" and row["id"] == "zh#q"
    assert core.parse_questions("1：第一个问题是什么？\n2、第二个问题是什么？\n问题3：第三个问题是什么？") == [
        "第一个问题是什么？", "第二个问题是什么？", "第三个问题是什么？"]


def test_parse_questions_accepts_common_numberings():
    text = "Here you go:\n1: First one?\n2. Second one?\nQ3) Third one?\nnot a question\n4: First one?"
    assert core.parse_questions(text) == ["First one?", "Second one?", "Third one?"]


def test_batches_stage_in_both_modes():
    from stages.base import Dropped
    from stages.longalign.stages import LongAlignBatches

    lengths, labels = _rows(37, seed=5, hi=300)
    records = [{"id": f"r{k:02d}", "input_ids": list(range(n)), "labels": labels[k],
                "n_target": sum(x != -100 for x in labels[k]), "len": n} for k, n in enumerate(lengths)]
    sorted_stage = LongAlignBatches(LongAlignBatches.Params(mode="sorted", batch_size=4), seed=0)
    metrics: dict = {}
    in_place_order = sorted(records, key=lambda r: sorted_stage.group_of(r)[1])  # as the engine hands it over
    outcomes = list(sorted_stage.build("00000", in_place_order, metrics))
    out = [o for o in outcomes if isinstance(o, dict)]
    assert len(out) == 36 and sum(isinstance(o, Dropped) for o in outcomes) == 1 and metrics["batches"] == 9
    for b in range(9):
        lens = [r["len"] for r in out if r["batch"] == b]
        assert len(lens) == 4 and lens == sorted(lens)
    pack_stage = LongAlignBatches(LongAlignBatches.Params(mode="pack", max_len=1024, packs_per_step=4), seed=0)
    order = sorted(records, key=lambda r: pack_stage.group_of(r)[1])  # the engine sorts a group by place
    packs = list(pack_stage.build("00000", order, {}))
    assert sorted(i for p in packs for i in p["seq_ids"]) == [f"r{k:02d}" for k in range(37)]
    assert [r["id"] for r in order] != sorted(r["id"] for r in order)  # shuffled by the seeded hash
    for p in packs:
        group = [q for q in packs if q["group"] == p["group"]]
        assert p["group_seq_count"] == sum(q["n_seqs"] for q in group)
        assert p["group_pack_count"] == len(group)  # K' (the last group may hold fewer than K packs)
    assert len(packs) % 4 and packs[-1]["group_pack_count"] == len(packs) % 4  # the case the field is for
    # the trainer's scale K'/M makes every sequence of every group weigh 1/M of its group
    for g in {p["group"] for p in packs}:
        group = [q for q in packs if q["group"] == g]
        scale = group[0]["group_pack_count"] / group[0]["group_seq_count"]
        per_pack = [sum(q["weights"]) * scale for q in group]
        assert sum(per_pack) / len(group) == pytest.approx(1.0, rel=1e-5)  # data-parallel mean over K' packs
        flat = [t for i in p["seq_ids"] for t in range(lengths[int(i[1:])])]
        assert p["input_ids"][:len(flat)] == flat  # the rows, back to back, then padding


def test_first_fit_decreasing_packs_fuller_with_the_same_invariants():
    lengths, labels = _rows(300, seed=6, hi=1500)
    nf, _ = core.pack_next_fit(lengths, 4096)
    ffd, skipped = core.pack_first_fit_decreasing(lengths, 4096, buffer=128)
    assert not skipped and len(ffd) < len(nf)
    members = [i for p in ffd for i in p.rows]
    assert sorted(members) == list(range(300))
    assert all(sum(lengths[i] for i in p.rows) <= 4096 and p.cu_seqlens[-1] == 4096 for p in ffd)


@pytest.mark.parametrize("reset_positions", [False, True])
def test_a_pack_attends_within_its_sequences_like_each_sequence_alone(reset_positions):
    """Spec 3.6 / 6: with the pack's boundaries (cu_seqlens) as a block-diagonal causal mask, a
    tiny random Llama gives every sequence the logits it gets alone, with the pack's position ids
    (0..L-1 as the reference, or reset per sequence): RoPE sees relative positions only."""
    import torch
    from transformers import LlamaConfig

    from gpu_jobs.lm import model_from_config
    from stages.longalign.stages import LongAlignBatches

    lengths = [37, 80, 11, 55]
    rng = np.random.default_rng(7)
    toks = [rng.integers(1, 200, n).tolist() for n in lengths]
    records = [{"id": f"s{k}", "input_ids": toks[k], "labels": toks[k], "n_target": lengths[k],
                "len": lengths[k]} for k in range(4)]
    stage = LongAlignBatches(LongAlignBatches.Params(mode="pack", max_len=256, shuffle=False,
                                                     reset_positions=reset_positions), seed=0)
    (pack,) = stage.build("00000", records, {})
    cfg = LlamaConfig(vocab_size=200, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    lm = model_from_config(cfg, None, device="cpu", attn_implementation="eager")
    L, cu = 256, pack["cu_seqlens"]
    allowed = torch.zeros(L, L, dtype=torch.bool)
    for a, b in zip(cu, cu[1:], strict=False):
        allowed[a:b, a:b] = torch.tril(torch.ones(b - a, b - a, dtype=torch.bool))
    mask = torch.where(allowed, 0.0, float("-inf"))[None, None]
    with torch.inference_mode():
        packed = lm.model(input_ids=torch.tensor([pack["input_ids"]]), attention_mask=mask,
                          position_ids=torch.tensor([pack["position_ids"]])).logits[0]
        for k, seq in enumerate(toks):
            alone = lm.model(input_ids=torch.tensor([seq])).logits[0]
            torch.testing.assert_close(packed[cu[k]:cu[k + 1]], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("packing", ["next_fit", "first_fit_decreasing"])
def test_packs_read_their_group_as_a_stream(packing):
    """A step's packs come out once the step is full (packs_per_step packs, or the buffer of
    first-fit-decreasing), never after reading the whole group; and they equal the list packers'."""
    from stages.longalign.stages import LongAlignBatches

    lengths, labels = _rows(3000, seed=7, hi=400)
    records = [{"id": f"r{k:04d}", "input_ids": list(range(n)), "labels": labels[k]} for k, n in enumerate(lengths)]
    stage = LongAlignBatches(LongAlignBatches.Params(mode="pack", max_len=1024, packs_per_step=2,
                                                     packing=packing, shuffle=False), seed=0)
    read: list[str] = []
    outcomes = stage.build("00000", read_as_stream(records, read), {})
    next(outcomes)
    assert len(read) <= (1001 if packing == "first_fit_decreasing" else 3 * 1024 // 20)
    packs = [o for o in outcomes if isinstance(o, dict)]
    want, _ = (core.pack_next_fit if packing == "next_fit" else core.pack_first_fit_decreasing)(lengths, 1024)
    assert [p["cu_seqlens"] for p in packs] == [p.cu_seqlens for p in want][1:]
    assert [p["seq_ids"] for p in packs] == [[f"r{i:04d}" for i in p.rows] for p in want][1:]


def test_sorted_mode_gets_its_rows_in_length_order_and_gives_the_list_rule():
    """The engine sorts the group by the place group_of gives (the length, ties in the rows' own
    order); the stage spills the rows and gives the batches of core.sorted_batches over the rows as
    they came, and refuses rows out of length order (parts of an older run)."""
    from stages.base import Dropped
    from stages.longalign.stages import LongAlignBatches

    lengths, labels = _rows(203, seed=9, hi=300)
    records = [{"id": f"r{k:03d}", "input_ids": list(range(n)), "labels": labels[k]} for k, n in enumerate(lengths)]
    stage = LongAlignBatches(LongAlignBatches.Params(mode="sorted", batch_size=8), seed=3)
    delivered = sorted(records, key=lambda r: stage.group_of(r)[1])  # stable: ties keep the rows' order
    metrics: dict = {}
    out = list(stage.build("00000", iter(delivered), metrics))
    groups, rest = core.sorted_batches(lengths, 8, seed=3)
    rows = [o for o in out if isinstance(o, dict)]
    assert [r["id"] for r in rows] == [f"r{i:03d}" for g in groups for i in g]
    assert [r["batch"] for r in rows] == [g for g, grp in enumerate(groups) for _ in grp]
    assert [r["labels"] for r in rows] == [labels[i] for g in groups for i in g]
    assert [o.record_id for o in out if isinstance(o, Dropped)] == [f"r{i:03d}" for i in rest]
    assert metrics == {"batches": 25, "rows": 200, "remainder": 3}
    with pytest.raises(ValueError, match="length order"):
        list(stage.build("00000", iter(records), {}))


def test_sorted_mode_names_its_place_so_parts_of_another_meaning_are_written_again():
    """The place of sorted mode is the length (it was 0): the feed format of its group step says
    so, so the markers of parts an older run wrote are not finished tasks; pack mode is unchanged."""
    from pipelines.engine.shapes.group_step import GroupShape
    from pipelines.engine.steps import PlannedStage
    from stages.longalign.stages import LongAlignBatches

    def form(mode):
        stage = LongAlignBatches(LongAlignBatches.Params(mode=mode), seed=0)
        return GroupShape().feed_format(PlannedStage(0, stage.name, stage.name, stage, None, None))

    assert form("pack") is None and form("sorted") == "length"
