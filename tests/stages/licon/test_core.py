"""LIConBench's pure parts (spec liconbench.md 4, 5, 7): rounds on the real KJV labels, the
exhaustion rule, the three orders, and scorers that never put a label in the model's mouth."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.licon import core


@pytest.fixture(scope="module")
def kjv_train_labels() -> list[str]:
    from pipelines.commands import corpora

    metas = [json.loads(d["metadata"]) for d in corpora.kjv_verses()]
    return [m["label"] for m in metas if m["split"] == "train"]


def test_every_round_shows_every_label_once_in_the_first_appearance_order(kjv_train_labels):
    labels = kjv_train_labels
    order = list(dict.fromkeys(labels))
    assert len(order) == 66
    rounds = list(core.round_robin(labels, rounds=5))
    assert len(rounds) == 5
    flat = [i for r in rounds for i in r]
    assert len(flat) == len(set(flat)) == 5 * 66
    for r in rounds:
        assert [labels[i] for i in r] == order  # positions r*L+1..(r+1)*L: each label once, same order
    for label in order:  # each label's examples in the split's order
        mine = [i for i in flat if labels[i] == label]
        assert mine == sorted(mine) == [i for i, x in enumerate(labels) if x == label][:5]


def test_an_exhausted_label_gives_its_place_to_the_first_later_label_with_examples_left():
    labels = ["a", "a", "b", "c", "c", "c"]
    # round 1: a, b, c; round 2: a, (b is spent: the next c), c; round 3: nothing left for a or b,
    # and c is spent too, so the rounds end
    assert list(core.round_robin(labels)) == [[0, 2, 3], [1, 4, 5]]
    assert list(core.round_robin(labels, limit=4)) == [[0, 2, 3], [1]]


def test_file_order_rounds_take_a_label_once_per_round_and_close_when_all_are_in():
    labels = ["x", "x", "y", "z", "y", "x", "z", "y"]
    # round 1: x(0), y(2), z(3); round 2 from 4: y(4), x(5), z(6); y(7) opens round 3, never closed
    assert list(core.file_order_rounds(labels)) == [[0, 2, 3], [4, 5, 6]]
    assert list(core.file_order_rounds(labels, rounds=1)) == [[0, 2, 3]]


def test_coverage_rounds_raise_every_type_count_to_the_round_number():
    sentences = [["per"], ["per", "loc"], ["org"], ["per"], ["loc", "org"], ["loc"], ["org", "org"]]
    rounds = list(core.coverage(sentences))
    counts: dict[str, int] = {}
    for r, this in enumerate(rounds, 1):
        for i in this:
            for t in sentences[i]:
                counts[t] = counts.get(t, 0) + 1
        assert min(counts.values()) >= r
    # per, per+loc, org reach 1 each; per, loc+org reach 2; loc, org+org reach 3
    assert rounds == [[0, 1, 2], [3, 4], [5, 6]]
    assert list(core.coverage(sentences, rounds=1)) == [[0, 1, 2]]


def test_grouped_and_shuffled_are_permutations_of_scattered_and_grouped_has_one_run_per_label(kjv_train_labels):
    labels = kjv_train_labels
    demos = [core.Labelled(str(i), f"text {i}", labels[i], (labels[i],), (labels[i],))
             for r in core.round_robin(labels, rounds=3) for i in r]
    grouped = core.ordered(demos, "grouped")
    shuffled = core.ordered(demos, "shuffled", random.Random(3))
    assert sorted(d.id for d in grouped) == sorted(d.id for d in demos) == sorted(d.id for d in shuffled)
    runs = 1 + sum(1 for a, b in zip(grouped, grouped[1:], strict=False) if a.label != b.label)
    assert runs == 66
    assert shuffled != demos and core.ordered(demos, "shuffled", random.Random(3)) == shuffled


def test_exact_match_takes_the_reply_as_it_is_and_never_substitutes_a_label():
    classes = ["Genesis", "Exodus", "1 John", "John"]
    assert core.score_reply("classification", " exodus.", ["Exodus"], classes) == core.Tally(1, 1, 1)
    assert core.score_reply("classification", "Text: x\nLabel: John\nText: y", ["John"], classes).correct == 1
    # a near miss is not a label: nothing is made of it, nothing is matched (no closest-label fallback)
    assert core.score_reply("classification", "Genesys", ["Genesis"], classes) == core.Tally(0, 0, 1)
    # "1 John" is a label of its own, not John with something before it
    assert core.score_reply("classification", "1 John", ["John"], classes) == core.Tally(0, 1, 1)
    assert core.score_reply("classification", "", ["John"], classes) == core.Tally(0, 0, 1)
    p, r, f1 = (core.Tally(1, 1, 1) + core.Tally(0, 0, 1) + core.Tally(0, 1, 1)).f1()
    assert (p, r) == (0.5, 1 / 3) and f1 == pytest.approx(0.4)


def test_ner_and_dialogue_relations_are_scored_item_by_item():
    classes = ["person-actor", "location-GPE"]
    gold = ["Tom Hanks: person-actor", "Paris: location-GPE"]
    reply = "Tom Hanks: person-actor\nParis: location-city\nfoo"  # one right, one invalid type, one not a pair
    assert core.score_reply("ner", reply, gold, classes) == core.Tally(1, 2, 2)
    rel = ["per:friends", "per:boss", "per:siblings"]
    assert core.score_reply("dialogre", "per:friends, per:siblings, unanswerable", ["per:friends", "per:boss"],
                            rel) == core.Tally(1, 2, 2)


def test_best_rounds_is_the_largest_count_within_the_budget():
    sizes = [0, 100, 210, 330, 460]
    assert core.best_rounds(lambda r: sizes[r], 4, 333) == 3
    assert core.best_rounds(lambda r: sizes[r], 4, 99) == 0
    assert core.best_rounds(lambda r: sizes[r], 4, 10_000) == 4


def test_tacred_test_side_keeps_file_order_and_at_most_cap_per_relation():
    labels = ["a", "b", "a", "a", "c", "b", "a", "c", "c", "c"]
    kept = core.file_order_capped(labels, 2)
    assert kept == [0, 1, 2, 4, 5, 7]  # the third "a" and "c" onwards are left out, order kept
    assert core.file_order_capped(labels, 100) == list(range(len(labels)))


# -- issue 33, points 1-3: spec 5 as clarified on 2026-12-03 ----------------------------------------


def test_dialogre_counts_a_position_only_when_the_gold_relation_is_inside_the_prediction():
    """The reference's rule: gold inside prediction, never prediction inside gold. ``per`` is inside
    every gold name, so the old two-way test scored three correct out of zero made."""
    rel = ["per:alumni", "per:age", "per:siblings"]
    assert core.score_reply("dialogre", "per, a, s", rel, rel) == core.Tally(0, 0, 3)
    total = core.score_reply("dialogre", "per, a, s", rel, rel) + core.score_reply("dialogre", "per:age", ["per:age"],
                                                                                     rel)
    p, r, f1 = total.f1()
    assert (p, r) == (1.0, 0.25) and 0 <= f1 <= 1
    # a longer prediction that holds the gold name is right (the reference's `in`)
    assert core.score_reply("dialogre", "relation per:age.", ["per:age"], rel) == core.Tally(1, 1, 1)


def test_the_first_answer_is_the_reply_and_a_label_after_a_new_demonstration_is_not():
    classes = ["joy", "anger"]
    reply = "joy\n\nText: I lost my keys again\nLabel: anger"
    assert core.reply_line(reply) == "joy"
    assert core.score_reply("classification", reply, ["joy"], classes) == core.Tally(1, 1, 1)
    # an echo of the query: its own label marker is skipped, the answer after it is the reply
    assert core.reply_line("Text: the query again\nLabel: anger\nText: more\nLabel: joy") == "anger"
    assert core.reply_line("Label: joy") == "joy"
    assert core.reply_block("Paris: city\nRome: town\n\nText: x\nLabel: Oslo: city") == ["Paris: city", "Rome: town"]


def test_every_ner_line_is_a_prediction_made_whatever_its_type():
    classes = ["city"]
    assert core.score_reply("ner", "Paris: city\nRome: town", ["Paris: city"], classes) == core.Tally(1, 2, 1)


@settings(max_examples=300, deadline=None)
@given(task=st.sampled_from(["classification", "relation", "ner", "dialogre"]),
       reply=st.text(alphabet=st.sampled_from(list("per:asgoTxLbl, \n")), max_size=60),
       gold=st.lists(st.sampled_from(["per:age", "per:alumni", "org:x", "a: per", "s: org"]), min_size=1, max_size=4))
def test_no_item_has_more_correct_than_made_or_gold(task, reply, gold):
    """What makes precision > 100 % impossible: per item, correct <= made and correct <= gold."""
    classes = ["per:age", "per:alumni", "org:x", "per", "org"]
    t = core.score_reply(task, reply, gold, classes)
    assert t.correct <= t.made and t.correct <= t.gold


@pytest.mark.parametrize("reply", [
    "label: joy", "**Label:** joy", "Label：joy", "joy Text: I lost my keys Label: anger",
    "Text: the query\r\nLabel: joy\r\nText: another\r\nLabel: anger"])
def test_markers_in_any_case_bold_or_full_width_and_a_demonstration_on_the_answers_line(reply):
    assert core.reply_line(reply) == "joy"
