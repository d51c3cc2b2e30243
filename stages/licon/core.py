"""LongICLBench / LIConBench, the pure parts (spec ../shared/specs/liconbench.md): demonstrations
chosen in rounds that each show every label once, their orders, the prompt, and the scorers (exact
match and micro-F1) that take a reply as it is: a reply that names no valid label is wrong, never
replaced by the closest label."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

SELECTIONS = ("round_robin", "file_order_rounds", "coverage")
ORDERS = ("scattered", "grouped", "shuffled")
TASKS = ("classification", "relation", "ner", "dialogre")


@dataclass(frozen=True)
class Labelled:
    """One labelled example: ``labels`` are the classes it shows (one for classification; an NER
    sentence's entity types; a dialogue's relations), ``answers`` the gold strings a reply is scored
    against, ``label`` the label field as a demonstration shows it."""

    id: str
    text: str
    label: str
    labels: tuple[str, ...]
    answers: tuple[str, ...]


# -- selection (spec 4.1, 4.2) ---------------------------------------------------------------------


def label_order(labels: Sequence[Sequence[str]]) -> list[str]:
    """Labels in the order of their first appearance (spec 4.1 step 1)."""
    seen: dict[str, None] = {}
    for ls in labels:
        for label in ls:
            seen.setdefault(label, None)
    return list(seen)


def file_order_capped(labels: Sequence[str], cap: int) -> list[int]:
    """TacRED's test side (spec 4.1): examples in file order, at most ``cap`` of each label."""
    seen: dict[str, int] = {}
    out = []
    for i, label in enumerate(labels):
        if seen.get(label, 0) < cap:
            seen[label] = seen.get(label, 0) + 1
            out.append(i)
    return out


def round_robin(labels: Sequence[str], rounds: int | None = None, limit: int | None = None) -> Iterator[list[int]]:
    """Spec 4.1: per round, per label in order of first appearance, the next unused example of that
    label, or, when it has none left, of the first later label that still has one. Yields each
    round's indices; stops after ``rounds`` rounds, ``limit`` examples in all, or an empty pool."""
    order = label_order([[x] for x in labels])
    pools: dict[str, list[int]] = {label: [] for label in order}
    for i, label in enumerate(labels):
        pools[label].append(i)
    cursor = dict.fromkeys(order, 0)
    taken, r = 0, 0
    while (rounds is None or r < rounds) and (limit is None or taken < limit):
        this: list[int] = []
        for k in range(len(order)):
            if limit is not None and taken + len(this) >= limit:
                break
            source = next((lab for lab in order[k:] if cursor[lab] < len(pools[lab])), None)
            if source is None:
                continue
            this.append(pools[source][cursor[source]])
            cursor[source] += 1
        if not this:
            return
        taken += len(this)
        r += 1
        yield this


def file_order_rounds(labels: Sequence[str], rounds: int | None = None) -> Iterator[list[int]]:
    """Spec 4.2, TacRED: walk the split once in order, taking an example when its label is not yet
    in the current round; a round closes when every label is in it (the order within a round is
    the file's)."""
    every = set(labels)
    this: list[int] = []
    used: set[str] = set()
    r = 0
    for i, label in enumerate(labels):
        if rounds is not None and r >= rounds:
            return
        if label in used:
            continue
        used.add(label)
        this.append(i)
        if used == every:
            yield this
            r += 1
            this, used = [], set()


def coverage(labels: Sequence[Sequence[str]], rounds: int | None = None) -> Iterator[list[int]]:
    """Spec 4.2, Few-NERD and DialogRE: examples in order until every label has been shown at least
    r times; round r is the examples added for it."""
    every = set(label_order(labels))
    counts = dict.fromkeys(every, 0)
    i, r = 0, 0
    while (rounds is None or r < rounds) and i < len(labels):
        r += 1
        this = []
        while i < len(labels) and min(counts.values(), default=r) < r:
            for label in labels[i]:
                counts[label] += 1
            this.append(i)
            i += 1
        if not this:
            return
        yield this


def select_rounds(selection: str, labels: Sequence[Sequence[str]], rounds: int | None = None) -> Iterator[list[int]]:
    if selection == "round_robin":
        return round_robin([ls[0] for ls in labels], rounds)
    if selection == "file_order_rounds":
        return file_order_rounds([ls[0] for ls in labels], rounds)
    if selection == "coverage":
        return coverage(labels, rounds)
    raise ValueError(f"selection {selection!r}: one of {', '.join(SELECTIONS)}")


def ordered(demos: Sequence[Labelled], order: str, rng: random.Random | None = None) -> list[Labelled]:
    """Spec 4.3: ``scattered`` keeps the rounds' order, ``grouped`` sorts by label (stable), so every
    label's demonstrations are adjacent, ``shuffled`` is a seeded permutation."""
    if order == "scattered":
        return list(demos)
    if order == "grouped":
        return sorted(demos, key=lambda d: d.label)
    if order == "shuffled":
        out = list(demos)
        (rng or random.Random(0)).shuffle(out)
        return out
    raise ValueError(f"order {order!r}: one of {', '.join(ORDERS)}")


# -- prompt (spec 4.4) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """The fixed lines of a prompt; every text is a parameter of the stage."""

    task: str = "Label each example. The answer must be one of the labels shown in the examples, written exactly " \
                "as they are written there."
    input_name: str = "Text"
    label_name: str = "Label"

    def demo(self, text: str, label: str) -> str:
        return f"{self.input_name}: {text}\n{self.label_name}: {label}"

    def query(self, text: str) -> str:
        return f"{self.input_name}: {text}\n{self.label_name}:"

    def instruction(self, classes: Sequence[str] | None) -> str:
        if classes is None:
            return self.task
        return f"{self.task}\nThe labels: {', '.join(classes)}."

    def context(self, demos: Sequence[Labelled]) -> str:
        return "\n\n".join(self.demo(d.text, d.label) for d in demos)

    def prompt(self, classes: Sequence[str] | None, demos: Sequence[Labelled], query: str) -> str:
        return f"{self.instruction(classes)}\n\n{self.context(demos)}\n\n{self.query(query)}"


# -- scoring (spec 5) ------------------------------------------------------------------------------


def _marker(name: str) -> str:
    """A field marker as models write it: any case, in bold or not, an ASCII or full-width colon."""
    return rf"[*_]*{re.escape(name)}[*_]*\s*[:：][*_]*"


def _answer(reply: str, template: Template) -> str:
    """Spec 5's parse (clarified 2026-12-03). A reply that begins by echoing the query (its input
    marker) is read from after that echo's label marker; then the text is cut at the first new
    demonstration (the input marker at a line's start, or after the answer on its line). A label
    written after the model starts inventing a demonstration is never its answer, so the *first*
    label marker counts, not the last. Markers match in any case, in bold, with either colon."""
    text = reply.lstrip()
    opens = re.compile(_marker(template.input_name), re.IGNORECASE)
    label = re.compile(_marker(template.label_name), re.IGNORECASE)
    if opens.match(text):
        found = label.search(text)
        if not found:
            return ""
        text = text[found.end():]
    else:
        found = label.match(text)
        if found:
            text = text[found.end():]
    cut = re.search(rf"(?:^|\s){_marker(template.input_name)}", text, re.IGNORECASE | re.MULTILINE)
    return text[:cut.start()] if cut else text


def reply_line(reply: str, template: Template = Template()) -> str:
    """The answer's first non-empty line (classification, relation and dialogue relation items)."""
    lines = [x for x in _answer(reply, template).strip().splitlines() if x.strip()]
    return lines[0].strip() if lines else ""


def reply_block(reply: str, template: Template = Template()) -> list[str]:
    """Every line of the answer (NER lists one entity a line), the same cuts as :func:`reply_line`."""
    return [x.strip() for x in _answer(reply, template).strip().splitlines() if x.strip()]


_EDGE = re.compile(r"^[\s\"'`]+|[\s\"'`.,]+$")


def normalize(label: str) -> str:
    """Lower case, no surrounding quotes, spaces or trailing full stop/comma (spec 5: Discovery)."""
    return _EDGE.sub("", label.lower())


DIALOGRE_MAX_LABELS = 500  # spec 5: the reference stops at 500 labels


@dataclass
class Tally:
    """Counts that micro P/R/F1 and accuracy are made of; they add over items."""

    correct: int = 0  # gold answers matched
    made: int = 0  # predictions made (spec 5 says, per task, which count)
    gold: int = 0  # gold answers

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.correct + other.correct, self.made + other.made, self.gold + other.gold)

    def f1(self) -> tuple[float, float, float]:
        p = self.correct / self.made if self.made else 0.0
        r = self.correct / self.gold if self.gold else 0.0
        return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def score_reply(task: str, reply: str, answers: Sequence[str], classes: Sequence[str],
                template: Template = Template()) -> Tally:
    """One item's tally (spec 5). No label is ever substituted for a prediction, and a correct
    prediction is always a made one, so precision and recall stay within [0, 1]."""
    valid = {normalize(c) for c in classes}
    if task in ("classification", "relation"):
        got = normalize(reply_line(reply, template))
        made = int(got in valid)
        return Tally(int(made and got == normalize(answers[0])), made, 1)
    if task == "ner":
        # every parsed "entity: type" line is a prediction made; an invalid type is a wrong one
        gold = {_entity(a) for a in answers} - {None}
        pred = {e for e in (_entity(x) for x in reply_block(reply, template)) if e is not None}
        return Tally(len(gold & pred), len(pred), len(gold))
    if task == "dialogre":
        # position by position; right when the gold relation is inside the predicted item (the
        # reference's `gold in pred`, never the reverse); made when the item holds a valid relation
        pred = [normalize(x) for x in reply_line(reply, template).split(",") if x.strip()][:DIALOGRE_MAX_LABELS]
        gold = [normalize(a) for a in answers][:DIALOGRE_MAX_LABELS]
        made = [any(v in p for v in valid) for p in pred]
        correct = sum(1 for p, g, m in zip(pred, gold, made, strict=False) if m and g and g in p)
        return Tally(correct, sum(made), len(gold))
    raise ValueError(f"task {task!r}: one of {', '.join(TASKS)}")


def _entity(line: str) -> tuple[str, str] | None:
    if ":" not in line:
        return None
    name, _, kind = line.rpartition(":")
    name, kind = " ".join(name.lower().split()), normalize(kind)
    return (name, kind) if name and kind else None


def best_rounds(count: Callable[[int], int], available: int, budget: int) -> int:
    """The most rounds (1..available) whose prompt, counted by ``count(rounds)``, fits ``budget``;
    0 when one round is already too long. ``count`` grows with rounds, so a bisection finds it."""
    lo, hi = 0, available
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo
