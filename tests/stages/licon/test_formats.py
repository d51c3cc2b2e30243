"""Readers of LongICLBench's six source sets, each on a small hand-written fixture in the set's
published file format (the sets themselves are not reachable offline): labels, splits, the rows
each set's rules leave out, and a clear error for a file that is not in the format."""

from __future__ import annotations

import json

import pytest

from stages.licon.formats import FormatError, read_labelled
from tests.conftest import run_cli


def write(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")


def test_banking77_csv(tmp_path):
    write(tmp_path, "train.csv", 'text,category\nI still have not got my card,card_arrival\n'
          '"Why was I charged, twice?",transaction_charged_twice\n')
    write(tmp_path, "test.csv", "text,category\nmy card payment was reverted?,reverted_card_payment?\n")
    rows = list(read_labelled("banking77", str(tmp_path)))
    assert [(r["split"], r["label"]) for r in rows] == [
        ("train", "card_arrival"), ("train", "transaction_charged_twice"), ("test", "reverted_card_payment?")]
    assert rows[1]["text"] == "Why was I charged, twice?" and rows[0]["answers"] == ["card_arrival"]


def test_goemotions_tsv_keeps_single_label_rows_only(tmp_path):
    write(tmp_path, "emotions.txt", "admiration\namusement\nanger\n")
    write(tmp_path, "train.tsv", "So funny\t1\teea1\nGreat job and lol\t0,1\teea2\nUgh\t2\teea3\n")
    write(tmp_path, "test.tsv", "Well done\t0\teeb1\n")
    rows = list(read_labelled("goemotions", str(tmp_path)))
    assert [(r["id"], r["label"], r["split"]) for r in rows] == [
        ("goemotions/eea1", "amusement", "train"), ("goemotions/eea3", "anger", "train"),
        ("goemotions/eeb1", "admiration", "test")]


def test_tacred_json_names_subject_and_object_and_leaves_out_no_relation(tmp_path):
    rows = [{"id": "t1", "relation": "per:title", "token": ["Tom", "Smith", "is", "a", "lawyer", "."],
             "subj_start": 0, "subj_end": 1, "obj_start": 4, "obj_end": 4},
            {"id": "t2", "relation": "no_relation", "token": ["It", "rained"], "subj_start": 0, "subj_end": 0,
             "obj_start": 1, "obj_end": 1}]
    write(tmp_path, "train.json", json.dumps(rows))
    out = list(read_labelled("tacred", str(tmp_path)))
    assert len(out) == 1 and out[0]["label"] == "per:title" and out[0]["task"] == "relation"
    assert "subject: Tom Smith; object: lawyer" in out[0]["text"]


def test_fewnerd_groups_consecutive_tokens_of_a_type_into_one_entity(tmp_path):
    write(tmp_path, "train.txt", "Tom\tperson-actor\nHanks\tperson-actor\nvisited\tO\nParis\tlocation-GPE\n.\tO\n\n"
          "Nothing\tO\nhere\tO\n\nOslo\tlocation-GPE\nand\tO\nBergen\tlocation-GPE\n")
    rows = list(read_labelled("fewnerd", str(tmp_path / "train.txt")))
    assert [r["answers"] for r in rows] == [["Tom Hanks: person-actor", "Paris: location-GPE"],
                                            ["Oslo: location-GPE", "Bergen: location-GPE"]]
    assert rows[0]["labels"] == ["person-actor", "location-GPE"] and rows[0]["text"] == "Tom Hanks visited Paris ."
    assert rows[0]["label"] == "Tom Hanks: person-actor\nParis: location-GPE" and rows[0]["task"] == "ner"


def test_dialogre_lists_the_pairs_and_answers_their_relations_in_order(tmp_path):
    dialogues = [[["Speaker 1: Hi Ross!", "Speaker 2: Hey Mon."],
                  [{"x": "Speaker 1", "y": "Ross", "r": ["per:alternate_names"]},
                   {"x": "Speaker 2", "y": "Mon", "r": ["per:alternate_names", "per:siblings"]}]]]
    write(tmp_path, "test.json", json.dumps(dialogues))
    rows = list(read_labelled("dialogre", str(tmp_path)))
    assert rows[0]["split"] == "test" and rows[0]["answers"] == ["per:alternate_names", "per:alternate_names"]
    assert "1. Speaker 1 and Ross" in rows[0]["text"] and "2. Speaker 2 and Mon" in rows[0]["text"]


def test_discovery_tsv_with_marker_names_or_numbers(tmp_path):
    write(tmp_path, "markers.txt", "however,\nin other words,\n")
    write(tmp_path, "train.tsv", "sentence1\tsentence2\tlabel\nIt rained.\twe went out.\t0\n"
          "He left.\the was tired.\tin other words,\n")
    rows = list(read_labelled("discovery", str(tmp_path)))
    assert [r["label"] for r in rows] == ["however,", "in other words,"]


def test_a_file_not_in_the_format_is_an_error_naming_it(tmp_path):
    write(tmp_path, "train.csv", "sentence,intent\nhello,greet\n")
    with pytest.raises(FormatError, match="train.csv: needs the columns text,category"):
        list(read_labelled("banking77", str(tmp_path)))
    with pytest.raises(FormatError, match="none of the split files"):
        list(read_labelled("tacred", str(tmp_path)))


def test_eval_import_writes_jsonl_once_and_never_over_a_file(tmp_path):
    write(tmp_path / "b77", "train.csv", "text,category\nwhere is my card,card_arrival\n")
    out = tmp_path / "b77.jsonl"
    done = run_cli("eval", "import", "banking77", str(tmp_path / "b77"), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["label"] == "card_arrival"
    again = run_cli("eval", "import", "banking77", str(tmp_path / "b77"), "-o", str(out))
    assert again.returncode == 2 and "exists" in again.stderr and json.loads(out.read_text())["label"] == "card_arrival"
    bad = run_cli("eval", "import", "tacred", str(tmp_path / "b77"), "-o", str(tmp_path / "t.jsonl"))
    assert bad.returncode == 2 and "none of the split files" in bad.stderr and not (tmp_path / "t.jsonl").exists()


def test_a_local_hf_dataset_with_class_numbers_gets_their_names(tmp_path):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["activate_my_card", "age_limit"])})
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["how do I activate it", "am I old enough"], "label": [0, 1]},
                                            features=features),
        "test": datasets.Dataset.from_dict({"text": ["card activation"], "label": [0]}, features=features)})
    dd.save_to_disk(str(tmp_path / "b77"))
    rows = list(read_labelled("hf", str(tmp_path / "b77")))
    assert [(r["split"], r["label"]) for r in rows] == [("train", "activate_my_card"), ("train", "age_limit"),
                                                        ("test", "activate_my_card")]
    with pytest.raises(FormatError, match="no column utterance"):
        list(read_labelled("hf", str(tmp_path / "b77"), text_field="utterance"))
