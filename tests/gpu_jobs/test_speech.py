"""The speech engines' small parts and the plug-in route: Mandarin's spoken form for espeak-ng,
WAV round trips, and a pipeline whose TTS and ASR are classes named in the pipeline file (the
ASR here is an oracle that returns a stored transcript, spec 4.4's golden-test engine)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from gpu_jobs import speech
from tests.conftest import REPO, run_cli, write_jsonl

TRANSCRIPTS = {"今天天气很好。我们去公园散步。": "今天天汽很好，我们去公园散步。"}


class ToneTts:
    """Half a second of a 440 Hz tone per sentence: audio without a speech engine."""

    name = "tone"

    def __init__(self, language: str = "zh", rate: int = 160):
        self.language, self.rate = language, rate

    def spoken_form(self, text: str) -> str:
        return text

    def synthesize(self, text: str) -> np.ndarray:
        t = np.arange(speech.SAMPLE_RATE // 2) / speech.SAMPLE_RATE
        return (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


class OracleAsr:
    """Returns the transcript stored for the one document these tests speak."""

    name = "oracle"

    def __init__(self, language: str = "zh", beam_size: int = 1):
        self.language = language

    def transcribe(self, audio: np.ndarray) -> str:
        assert audio.dtype == np.float32 and len(audio) > speech.SAMPLE_RATE  # two sentences and silences
        return next(iter(TRANSCRIPTS.values()))


def test_mandarin_is_spoken_as_tone_numbered_pinyin_with_numbers_in_words():
    spoken = speech.pinyin_for_speech("1998年，我们去北京。")
    assert spoken.split()[:4] == ["yi1", "jiu3", "jiu3", "ba1"]
    assert "bei3" in spoken and "jing1" in spoken and "," in spoken and spoken.endswith(".")


def test_wav_round_trip(tmp_path):
    samples = (0.5 * np.sin(np.linspace(0, 100, 16_000))).astype(np.float32)
    speech.write_wav(samples, tmp_path / "a.wav")
    back, rate = speech.read_wav((tmp_path / "a.wav").read_bytes())
    assert rate == 16_000 and np.max(np.abs(back - samples)) < 1e-4


def test_engines_by_name_or_by_import_path():
    assert isinstance(speech.open_asr("tests.gpu_jobs.test_speech:OracleAsr", language="zh"), OracleAsr)
    assert isinstance(speech.open_tts("espeak-ng", language="en"), speech.EspeakTts)
    with pytest.raises(ValueError, match="one of espeak-ng"):
        speech.open_tts("festival")
    with pytest.raises(ValueError, match="cannot import"):
        speech.open_asr("tests.gpu_jobs.test_speech:Nothing")


def test_a_pipeline_plugs_its_own_engines(tmp_path):
    spec = (REPO / "pipelines" / "chft.yaml").read_text()
    spec = spec.replace("min_chars: 200", "min_chars: 5").replace("tts: espeak-ng, asr: faster-whisper",
                                                                  "tts: 'tests.gpu_jobs.test_speech:ToneTts', "
                                                                  "asr: 'tests.gpu_jobs.test_speech:OracleAsr'")
    (tmp_path / "p.yaml").write_text(spec)
    ref = next(iter(TRANSCRIPTS))
    src = write_jsonl(tmp_path / "d.jsonl", [{"id": "d1", "text": ref}])
    done = run_cli("run", str(tmp_path / "p.yaml"), "--input", str(src), "--output", str(tmp_path / "out"),
                   "--catalog", str(tmp_path / "c.duckdb"), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    (full,) = [r for r in pq.read_table(str(tmp_path / "out" / "data")).to_pylist() if r["setting"] == "full_text"]
    assert json.loads(full["tts"])["engine"] == "tone" and json.loads(full["asr"])["engine"] == "oracle"
    word, mark = full["pairs"]  # grouped by jieba's words: the one with 汽 in it
    assert "汽" in word["hyp_span"] and word["ref_span"] == word["hyp_span"].replace("汽", "气")
    assert word["type"] == "homophone" and (mark["hyp_span"], mark["ref_span"], mark["type"]) == ("，", "。",
                                                                                                 "punctuation")
