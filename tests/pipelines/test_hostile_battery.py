"""Arbitrary input to the readers (JSONL, Parquet, text), the pipeline-file loader and the reply
parsers of every evaluation set gives a result or a clear refusal, never a traceback (issue 32, the property battery;
the card writer's properties are in test_markdown.py). hypothesis draws the inputs; its example
database (.hypothesis/) is git-ignored, so every run starts from the strategies alone."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.spec import InputSpec, PipelineError, ReadSpec, load_pipeline
from pipelines.storage.readers import InputError, Rejected, plan_shards, read_shard
from stages.adaleval import core as adaleval_core
from stages.chft import scoring as chft_scoring
from stages.licon import core as licon_core

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Lines a JSONL file might hold: valid records, JSON that is not a record, broken JSON, bytes that
# are not UTF-8, a byte-order mark, very long lines.
_record = st.fixed_dictionaries({"id": st.one_of(st.text(max_size=8), st.integers(), st.none()),
                                 "text": st.one_of(st.text(max_size=40), st.integers(), st.none(),
                                                   st.lists(st.text(max_size=5), max_size=3))})
_line = st.one_of(_record.map(lambda r: json.dumps(r).encode()),
                  st.one_of(st.integers(), st.text(max_size=10), st.lists(st.integers(), max_size=3)).map(
                      lambda x: json.dumps(x).encode()),
                  st.binary(max_size=60), st.just(b"\xef\xbb\xbf{\"id\": \"a\", \"text\": \"b\"}"),
                  st.just(b"{\"id\": \"x\", \"text\": \"" + b"y" * 300 + b"\"}"))


@SETTINGS
@given(st.lists(_line, max_size=12), st.sampled_from([b"\n", b"\r\n"]))
def test_any_jsonl_bytes_read_as_records_or_rejects_never_a_traceback(lines, eol):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "in.jsonl"
        path.write_bytes(eol.join(lines))
        inputs = [InputSpec(path=str(path))]
        read = ReadSpec(shard_mb=0.01, max_record_bytes=200)
        try:
            shards = plan_shards(inputs, read)
        except InputError as e:  # an empty or blank file: refused, saying so
            assert "is empty" in str(e)
            return
        out = [x for s in shards for x in read_shard(s, inputs, read)]
        for x in out:
            assert isinstance(x, (dict, Rejected))
            if isinstance(x, dict):
                assert isinstance(x["id"], str) and isinstance(x["text"], str) and x["text"]
        assert [p.name for p in Path(d).iterdir()] == ["in.jsonl"]  # reading wrote nothing


_yaml_piece = st.sampled_from(["name: x\n", "stages:\n", "  - stage: normalize\n", "  - stage: nope\n",
                               "    params: {a: 1}\n", "seed: -1\n", "a: &a [1, 2]\n", "b: *a\n", "name: x\n",
                               "read: {shard_mb: 0}\n", "inputs: [{path: 3}]\n", "\t", ": :\n", "- [\n", "!!binary x\n",
                               "stages: 7\n", "output: {path: ../x}\n", "label: \"a\\nb\"\n"])


@SETTINGS
@given(st.one_of(st.text(max_size=200), st.lists(_yaml_piece, max_size=10).map("".join)))
def test_any_pipeline_text_loads_or_is_refused_with_a_line_and_a_fix(text):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "p.yaml"
        path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
        try:
            loaded = load_pipeline(path)
        except PipelineError as e:
            assert str(path) in str(e)
            return
        assert loaded.spec.name and loaded.spec.stages


_reply = st.one_of(st.text(max_size=120),
                   st.sampled_from(["[2, 1, 4, 3]", "2 > 1 > 4 > 3", "The answer is 3.",
                                    "Label: joy\nText: x Label: no", "Paris: city\nRome: town", "per, a, s",
                                    "{\"pairs\": [{\"from\": \"a\"}]}",
                                    "```json\n{\"pairs\": []}\n```", "A3", "", "\x00", "9" * 400]))


@SETTINGS
@given(_reply, st.integers(min_value=1, max_value=8))
def test_every_reply_parser_answers_for_any_reply(reply, n):
    adaleval_core.parse_tsort_reference(reply, n)
    adaleval_core.parse_tsort_strict(reply, n)
    adaleval_core.parse_best_answer_reference(reply, n)
    adaleval_core.parse_best_answer_strict(reply, n)
    pairs = chft_scoring.parse_predicted_pairs(reply)
    assert pairs is None or isinstance(pairs, list)
    chft_scoring.score_correction("ni hao shi jie", "你好世界", reply)
    licon_core.reply_line(reply)
    licon_core.reply_block(reply)
    for task in licon_core.TASKS:
        licon_core.score_reply(task, reply, ["joy"], ["joy", "anger"])


@SETTINGS
@given(st.one_of(st.binary(max_size=300), st.just(b"PAR1"), st.just(b"PAR1" + b"\x00" * 20 + b"PAR1")))
def test_any_bytes_named_parquet_are_refused_or_read_never_a_traceback(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "in.parquet"
        path.write_bytes(data)
        inputs = [InputSpec(path=str(path))]
        try:
            shards = plan_shards(inputs, ReadSpec())
        except InputError as e:  # not Parquet, or damaged: refused before any work, naming the file
            assert "in.parquet" in str(e)
            return
        for x in (x for s in shards for x in read_shard(s, inputs, ReadSpec())):
            assert isinstance(x, (dict, Rejected))
        assert [p.name for p in Path(d).iterdir()] == ["in.parquet"]  # reading wrote nothing


@SETTINGS
@given(st.binary(max_size=300))
def test_any_bytes_of_a_text_file_are_one_record_or_a_reject(data):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "docs").mkdir()
        path = Path(d) / "docs" / "a.txt"
        path.write_bytes(data)
        inputs = [InputSpec(path=str(Path(d) / "docs"))]
        shards = plan_shards(inputs, ReadSpec())
        out = [x for s in shards for x in read_shard(s, inputs, ReadSpec())]
        assert len(out) == 1 and isinstance(out[0], (dict, Rejected))
