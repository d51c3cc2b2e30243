"""Readers of the six LongICLBench source sets in their published formats (and of any labelled
dataset saved with ``datasets``), each to labelled rows
(``id, text, label, labels, answers, split, task``) that ``longforge eval import`` writes as JSONL
and the ``licon_select`` stage reads (spec ../shared/specs/liconbench.md 2). Each reader takes the
folder (or file) a user downloaded; a format it cannot read is an error that names the file."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path

SPLITS = ("train", "test")


class FormatError(ValueError):
    """A source that is not in the format it was given as; the message names the file."""


def _row(dataset: str, split: str, n: int, text: str, label: str, task: str = "classification",
         labels: list[str] | None = None, answers: list[str] | None = None, rid: str | None = None) -> dict:
    return {"id": rid or f"{dataset}/{split}/{n}", "text": text, "label": label, "labels": labels or [label],
            "answers": answers or [label], "split": split, "task": task, "dataset": dataset}


def _split_files(root: Path, names: dict[str, tuple[str, ...]]) -> Iterator[tuple[str, Path]]:
    """(split, file) for each split whose file exists under ``root`` (a file given alone is 'train')."""
    if root.is_file():
        yield "train", root
        return
    found = False
    for split, candidates in names.items():
        for c in candidates:
            if (root / c).is_file():
                found = True
                yield split, root / c
                break
    if not found:
        want = "; ".join(f"{s}: {' or '.join(c)}" for s, c in names.items())
        raise FormatError(f"{root}: none of the split files ({want})")


def _complete_rows(reader: csv.DictReader, path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """(n, row) of a CSV/TSV reader; a row that lacks a column (an unterminated quote ran to the end
    of the file, or a short row) is a FormatError naming the file and the line."""
    for n, r in enumerate(reader):
        missing = [c for c in columns if r.get(c) is None]
        if missing:
            raise FormatError(f"{path}: record {n + 1} (ending on line {reader.line_num}) has no "
                              f"{', '.join(missing)}: an unterminated quote, or a short row")
        yield n, r


def banking77(root: Path) -> Iterator[dict]:
    """PolyAI's ``train.csv`` / ``test.csv`` with a header ``text,category`` (the HF copy saved as
    CSV has the same columns)."""
    for split, path in _split_files(root, {"train": ("train.csv",), "test": ("test.csv",)}):
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if not {"text", "category"} <= set(reader.fieldnames or ()):
                raise FormatError(f"{path}: needs the columns text,category (has {reader.fieldnames})")
            for n, r in _complete_rows(reader, path, ("text", "category")):
                yield _row("banking77", split, n, r["text"].strip(), r["category"].strip())


def goemotions(root: Path) -> Iterator[dict]:
    """Google's ``train.tsv`` / ``test.tsv`` (text, comma-separated label numbers, id) with
    ``emotions.txt`` naming the numbers; rows with more than one label are left out (spec 2)."""
    names_file = root / "emotions.txt" if root.is_dir() else root.parent / "emotions.txt"
    if not names_file.is_file():
        raise FormatError(f"{names_file}: missing (one emotion name a line, the numbers' names)")
    names = [x.strip() for x in names_file.read_text(encoding="utf-8").splitlines() if x.strip()]
    for split, path in _split_files(root, {"train": ("train.tsv",), "test": ("test.tsv",)}):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            parts = line.split("\t")
            if len(parts) != 3:
                raise FormatError(f"{path}:{n + 1}: needs text<TAB>labels<TAB>id")
            labels = [int(x) for x in parts[1].split(",") if x.strip()]
            if len(labels) == 1:
                yield _row("goemotions", split, n, parts[0].strip(), names[labels[0]], rid=f"goemotions/{parts[2]}")


def tacred(root: Path) -> Iterator[dict]:
    """TACRED's JSON (LDC): a list of {id, relation, token, subj_start/end, obj_start/end}; the
    sentence with its subject and object named; ``no_relation`` left out (spec 2)."""
    for split, path in _split_files(root, {"train": ("train.json",), "test": ("test.json",)}):
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise FormatError(f"{path}: not JSON ({e})") from None
        for n, r in enumerate(rows):
            if r["relation"] == "no_relation":
                continue
            tokens = r["token"]
            subj = " ".join(tokens[r["subj_start"]:r["subj_end"] + 1])
            obj = " ".join(tokens[r["obj_start"]:r["obj_end"] + 1])
            text = f"{' '.join(tokens)} (subject: {subj}; object: {obj})"
            yield _row("tacred", split, n, text, r["relation"], task="relation", rid=f"tacred/{r.get('id', n)}")


def fewnerd(root: Path) -> Iterator[dict]:
    """Few-NERD's supervised files (``train.txt`` / ``test.txt``): a token and its fine type
    (``person-actor``, ``O``) a line, sentences between blank lines; consecutive tokens of one type
    make one entity (the dataset's IO scheme). Sentences without an entity are left out."""
    for split, path in _split_files(root, {"train": ("train.txt",), "test": ("test.txt",)}):
        sentence: list[tuple[str, str]] = []
        n = 0
        for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
            if line.strip():
                parts = line.split("\t")
                if len(parts) != 2:
                    raise FormatError(f"{path}: line {line!r} is not token<TAB>type")
                sentence.append((parts[0], parts[1].strip()))
                continue
            if sentence:
                entities = _entities(sentence)
                if entities:
                    answers = [f"{name}: {kind}" for name, kind in entities]
                    yield _row("fewnerd", split, n, " ".join(t for t, _ in sentence), "\n".join(answers), task="ner",
                               labels=[kind for _, kind in entities], answers=answers)
                n += 1
            sentence = []


def _entities(sentence: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    words: list[str] = []
    kind = "O"
    for token, tag in [*sentence, ("", "O")]:
        if tag != kind and words:
            out.append((" ".join(words), kind))
            words = []
        if tag != "O":
            words.append(token)
        kind = tag
    return out


def dialogre(root: Path) -> Iterator[dict]:
    """DialogRE's ``train.json`` / ``test.json``: a list of [utterances, [{x, y, r, ...}]]. The text is
    the dialogue and its numbered argument pairs; the answer, each pair's first relation in order."""
    for split, path in _split_files(root, {"train": ("train.json",), "test": ("test.json",)}):
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise FormatError(f"{path}: not JSON ({e})") from None
        for n, (turns, pairs) in enumerate(rows):
            listed = "\n".join(f"{k}. {p['x']} and {p['y']}" for k, p in enumerate(pairs, 1))
            relations = [p["r"][0] for p in pairs]
            text = "\n".join(turns) + f"\nPairs:\n{listed}"
            yield _row("dialogre", split, n, text, ", ".join(relations), task="dialogre", labels=relations,
                       answers=relations)


def discovery(root: Path) -> Iterator[dict]:
    """Discovery (Sileo et al.) as TSV with a header ``sentence1, sentence2, label`` (the label a
    marker name such as ``however,``, or its number with ``markers.txt`` naming the numbers)."""
    names_file = (root if root.is_dir() else root.parent) / "markers.txt"
    names = [x.rstrip("\n") for x in names_file.read_text(encoding="utf-8").splitlines()] \
        if names_file.is_file() else None
    for split, path in _split_files(root, {"train": ("train.tsv",), "test": ("test.tsv",)}):
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t")
            if not {"sentence1", "sentence2", "label"} <= set(reader.fieldnames or ()):
                raise FormatError(f"{path}: needs the columns sentence1, sentence2, label (has {reader.fieldnames})")
            for n, r in _complete_rows(reader, path, ("sentence1", "sentence2", "label")):
                label = r["label"]
                if label.isdigit() and names:
                    label = names[int(label)]
                text = f"{r['sentence1'].strip()} [marker] {r['sentence2'].strip()}"
                yield _row("discovery", split, n, text, label)


def hf_dataset(root: Path, text_field: str = "text", label_field: str = "label") -> Iterator[dict]:
    """Any labelled dataset saved with ``datasets``' ``save_to_disk`` (a DatasetDict with train and
    test splits, or one Dataset, read as train); class numbers are named by the column's ClassLabel."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(root))
    except (FileNotFoundError, ValueError) as e:
        raise FormatError(f"{root}: not a dataset saved with save_to_disk ({e})") from None
    splits = loaded if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    for split, ds in splits.items():
        if split not in SPLITS:
            continue
        missing = {text_field, label_field} - set(ds.column_names)
        if missing:
            raise FormatError(f"{root} [{split}]: no column {', '.join(sorted(missing))} (has {ds.column_names}); "
                              "name the columns with --text-field and --label-field")
        feature = ds.features[label_field]
        names = feature.names if isinstance(feature, datasets.ClassLabel) else None
        for n, row in enumerate(ds):
            label = row[label_field]
            label = names[label] if names is not None and isinstance(label, int) else str(label)
            yield _row(root.name, split, n, str(row[text_field]).strip(), label)


def indosum(root: Path, fold: int = 1) -> Iterator[dict]:
    """IndoSum (Kurniawan & Louvan 2018) as published: ``{train,dev,test}.0N.jsonl``, one article a
    line with ``id``, ``category`` and ``paragraphs`` (paragraphs -> sentences -> word tokens). The
    text is the tokens space-joined, a paragraph a line, so the hack's words are IndoSum's tokens;
    label: the category. An id seen again (the folds share articles) is left out."""
    seen: set[str] = set()
    files = {s: (f"{s}.{fold:02d}.jsonl",) for s in ("train", "dev", "test")}
    for split, path in _split_files(root, files):
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    art = json.loads(line)
                    paragraphs = art["paragraphs"]
                    rid, category = str(art["id"]), str(art["category"])
                except (ValueError, KeyError, TypeError) as e:
                    raise FormatError(f"{path}:{n}: not an IndoSum article ({type(e).__name__}: {e})") from None
                if rid in seen:
                    continue
                seen.add(rid)
                text = "\n".join(" ".join(" ".join(sentence) for sentence in para) for para in paragraphs)
                row = _row("indosum", split, n, text, category, rid=f"indosum/{rid}")
                row["source_url"] = art.get("source_url")
                yield row


FORMATS: dict[str, Callable[[Path], Iterator[dict]]] = {
    "banking77": banking77, "goemotions": goemotions, "tacred": tacred, "fewnerd": fewnerd,
    "dialogre": dialogre, "discovery": discovery, "hf": hf_dataset, "indosum": indosum,
}


def read_labelled(fmt: str, path: str, text_field: str = "text", label_field: str = "label",
                  fold: int = 1) -> Iterator[dict]:
    if fmt not in FORMATS:
        raise FormatError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
    root = Path(path).expanduser()
    if not root.exists():
        raise FormatError(f"{path}: no such file or folder")
    if fmt == "hf":
        yield from hf_dataset(root, text_field, label_field)
    elif fmt == "indosum":
        yield from indosum(root, fold)
    else:
        yield from FORMATS[fmt](root)
