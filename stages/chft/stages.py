"""ChFT as three per-record stages (spec ../shared/specs/chft.md): select and split the documents,
transcribe them (speech synthesis then recognition, or the homophone channel), and turn each
(reference, hypothesis) into a full-text record and its segment records with the error-correction
pairs, both targets and the four prompts. The pure parts are in :mod:`stages.chft.core`, the
engines in :mod:`gpu_jobs.speech`."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from schemas import REGISTRY, RecordSchema
from stages import register
from stages.base import Dropped, Measured, Outcome, RecordStage, Rejected, Resources, StageParams, metadata_of
from stages.blocks.eval_view import LONGBENCH_FIELDS, item_hash, longbench_length, seeded
from stages.chft import core

SPLITS = ("train", "test_homogeneous", "test_up_to_date", "test_hard")

DOCUMENT_IN = RecordSchema("chft_input", 1, (pa.field("id", pa.string(), nullable=False), pa.field("text", pa.string()),
                                           pa.field("language", pa.string()), pa.field("metadata", pa.string())))
SELECTED = REGISTRY.register(RecordSchema("chft_document", 1, (
    pa.field("id", pa.string(), nullable=False),
    pa.field("reference_raw", pa.string()),
    pa.field("reference", pa.string()),  # canonical (spec 4.5)
    pa.field("language", pa.string()),
    pa.field("split", pa.string()),
    pa.field("source", pa.string()),
), doc="A ChFT document: its reference text and split."))
TRANSCRIBED = REGISTRY.register(SELECTED.extended("chft_document+transcript", 1, (
    pa.field("hypothesis_raw", pa.string()),
    pa.field("tts", pa.string()),  # JSON: engine, voice, rate, noise, sample rate, spoken form, audio path
    pa.field("asr", pa.string()),  # JSON: engine, model, beam, language (or the channel and its rates)
    pa.field("audio_seconds", pa.float64()),
)))
_PAIR = pa.struct([pa.field("hyp_span", pa.string()), pa.field("ref_span", pa.string()),
                   pa.field("hyp_start", pa.int64()), pa.field("hyp_end", pa.int64()),
                   pa.field("ref_start", pa.int64()), pa.field("ref_end", pa.int64()), pa.field("type", pa.string())])
CHFT_RECORD = REGISTRY.register(RecordSchema("chft_record", 1, LONGBENCH_FIELDS + (
    pa.field("doc_id", pa.string()),
    pa.field("split", pa.string()),
    pa.field("setting", pa.string()),  # full_text | segment
    pa.field("reference", pa.string()),
    pa.field("hypothesis", pa.string()),
    pa.field("reference_raw", pa.string()),
    pa.field("hypothesis_raw", pa.string()),
    pa.field("pairs", pa.list_(_PAIR)),
    pa.field("target_text", pa.string()),
    pa.field("target_json", pa.string()),
    pa.field("prompt_text", pa.string()),
    pa.field("prompt_json", pa.string()),
    pa.field("tts", pa.string()),
    pa.field("asr", pa.string()),
    pa.field("cer_before", pa.float64()),
    pa.field("n_chars", pa.int64()),
    pa.field("n_pairs", pa.int64()),
    pa.field("asr_failed", pa.bool_()),
    pa.field("repetition", pa.float64()),  # zlib ratio of the hypothesis over the reference's: loops score high
    pa.field("segment_index", pa.int32()),  # segment records
    pa.field("n_segments", pa.int32()),
    pa.field("sentence_range", pa.list_(pa.int32())),  # hypothesis sentences [first, last)
    pa.field("hyp_offset", pa.int64()),  # where the segment starts in the full hypothesis
    pa.field("ref_offset", pa.int64()),  # and in the full reference
), doc="A ChFT error-correction record: an ASR hypothesis, its reference and the pairs between them."))


def cpu_seconds() -> float:
    """CPU time of this process (all its threads: Whisper's) and of its finished children
    (espeak-ng, sox): what synthesis and recognition cost."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def _unit(key: str, seed: int) -> float:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64


class SelectParams(StageParams):
    language: str = Field("zh", description="zh or en: sentence marks, tokens, voices")
    min_chars: int = Field(200, ge=1, description="[spec 4.1: 200]")
    max_chars: int = Field(3000, ge=1, description="[spec 4.1: 3000]")
    min_cjk: float = Field(0.6, ge=0, le=1, description="Chinese: share of CJK among letters [0.6]")
    test_frac: float = Field(0.05, ge=0, le=1, description="held out as test_homogeneous [0.05]")
    hard_frac: float = Field(0.05, ge=0, le=1, description="held out as test_hard (a harder channel) [ours: 0.05]")
    up_to_date_from: float | None = Field(None, ge=0, le=1, description="documents whose metadata 'position' "
                                          "(0..1 through the source's time span) is at least this are test_up_to_date "
                                          "[People's Daily: by place in the month, having no dates]")


@register
class ChftSelect(RecordStage):
    """Keeps documents of the right length and language, canonical, with their split."""

    name = "chft_select"
    Params = SelectParams
    input_schema = DOCUMENT_IN

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return SELECTED

    def process(self, record: dict) -> Iterator[Outcome]:
        p: SelectParams = self.params
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            yield Rejected(record["id"], "empty document", "'text' is empty or missing")
            return
        ref = core.canonical(text)
        if not p.min_chars <= len(ref) <= p.max_chars:
            yield Dropped(record["id"], "length", f"{len(ref)} characters, kept: [{p.min_chars}, {p.max_chars}]")
            return
        letters = [c for c in ref if c.isalpha()]
        cjk = sum(1 for c in letters if core._CJK_CHAR.match(c)) / max(len(letters), 1)
        if p.language == "zh" and cjk < p.min_cjk:
            yield Dropped(record["id"], "not Chinese", f"CJK share {cjk:.2f} < {p.min_cjk}")
            return
        position = metadata_of(record).get("position")
        u = _unit(record["id"], self.seed)
        if p.up_to_date_from is not None and isinstance(position, int | float) and position >= p.up_to_date_from:
            split = "test_up_to_date"
        elif u < p.test_frac:
            split = "test_homogeneous"
        elif u < p.test_frac + p.hard_frac:
            split = "test_hard"
        else:
            split = "train"
        yield {"id": record["id"], "reference_raw": text, "reference": ref, "language": p.language, "split": split,
               "source": record.get("source")}


class TranscribeParams(StageParams):
    source: str = Field("speech", description="speech (TTS then ASR) or homophone (the text-level channel, "
                        "labelled as such in every record)")
    tts: str = Field("espeak-ng", description="TTS engine: a name in gpu_jobs.speech.TTS_ENGINES, or "
                     "package.module:Class (synthesize(text) -> 16 kHz float32 samples)")
    asr: str = Field("faster-whisper", description="ASR engine: a name in gpu_jobs.speech.ASR_ENGINES, or "
                     "package.module:Class (transcribe(samples) -> text)")
    rate: int = Field(160, gt=0, description="speaking rate, words per minute")
    silence_ms: int = Field(300, ge=0, description="between sentences [spec 4.3: 300]")
    hard_rate: int = Field(220, gt=0, description="test_hard: a faster voice [ours]")
    hard_snr_db: float = Field(10.0, description="test_hard: white noise at this SNR [spec 4.1: 10 dB]")
    beam_size: int = Field(5, ge=1, description="ASR beam [Whisper's default]")
    keep_audio: bool = Field(False, description="write each document's audio to <output>/audio/ (an artifact)")
    homophone: float = Field(0.03, ge=0, le=1, description="channel: homophone rate per character [0.03]")
    deletion: float = Field(0.005, ge=0, le=1, description="channel: deletion rate [0.005]")
    insertion: float = Field(0.005, ge=0, le=1, description="channel: insertion rate [0.005]")
    punctuation: float = Field(0.2, ge=0, le=1, description="channel: share of marks dropped or changed [0.2]")
    verbalize_numbers: bool = Field(True, description="channel: numbers read out (no ITN) [true]")
    hard_factor: float = Field(2.0, ge=1, description="channel: test_hard rates times this [ours]")

    @model_validator(mode="after")
    def _known(self):
        if self.source not in ("speech", "homophone"):
            raise ValueError("source: speech or homophone")
        return self

    def channel(self, hard: bool) -> core.Channel:
        f = self.hard_factor if hard else 1.0
        return core.Channel(min(self.homophone * f, 1), min(self.deletion * f, 1), min(self.insertion * f, 1),
                            min(self.punctuation * f, 1), self.verbalize_numbers)


@register
class ChftTranscribe(RecordStage):
    """The hypothesis of each reference: its sentences spoken (espeak-ng) and heard (Whisper) on the
    workers, or the homophone channel; the engines load once per worker."""

    name = "chft_transcribe"
    Params = TranscribeParams
    input_schema = SELECTED

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return TRANSCRIBED

    def resources(self) -> Resources:
        return Resources(batch_size=4, model=self.params.source == "speech")

    @functools.cached_property
    def _engines(self):
        from gpu_jobs import speech

        return speech

    def process(self, record: dict) -> Iterator[Outcome]:
        p: TranscribeParams = self.params
        hard = record["split"] == "test_hard"
        lang = record["language"]
        if p.source == "homophone":
            if lang != "zh":
                yield Rejected(record["id"], "no channel", f"the homophone channel is for Chinese, not {lang}")
                return
            ch = p.channel(hard)
            try:
                hyp = core.noisy_hypothesis(record["reference"], ch, seeded(self.seed, record["id"], "channel"))
            except ValueError as e:  # one document the channel cannot read is rejected, not the run
                yield Rejected(record["id"], "channel failed", str(e)[:500])
                return
            asr = {"engine": "homophone-channel", **ch.__dict__}
            yield {**record, "hypothesis_raw": hyp, "tts": json.dumps(None), "asr": json.dumps(asr, sort_keys=True),
                   "audio_seconds": 0.0}
            return
        speech = self._engines
        tts = speech.open_tts(p.tts, language=lang, rate=p.hard_rate if hard else p.rate)
        asr = speech.open_asr(p.asr, language=lang, beam_size=p.beam_size)
        silence = np.zeros(int(speech.SAMPLE_RATE * p.silence_ms / 1000), dtype=np.float32)
        t0 = cpu_seconds()
        pieces = []
        for sentence in core.sentences(record["reference"], lang):
            if sentence.strip() and not core.is_punct(sentence.strip()):
                pieces += [tts.synthesize(sentence.strip()), silence]
        audio = np.concatenate(pieces) if pieces else silence
        if hard and p.hard_snr_db is not None:
            rng = np.random.default_rng(int(_unit(record["id"], self.seed) * 2**32))
            power = float(np.mean(audio ** 2)) or 1e-8
            audio = audio + rng.normal(0, np.sqrt(power / 10 ** (p.hard_snr_db / 10)), audio.shape).astype(np.float32)
        t1 = cpu_seconds()
        hyp = asr.transcribe(audio)
        t2 = cpu_seconds()
        seconds = len(audio) / speech.SAMPLE_RATE
        audio_path = None
        if p.keep_audio and self.services.output_dir is not None:
            folder = Path(self.services.output_dir) / "audio"
            folder.mkdir(parents=True, exist_ok=True)
            audio_path = f"audio/{re.sub(r'[^A-Za-z0-9._-]+', '_', record['id'])}.wav"
            speech.write_wav(audio, Path(self.services.output_dir) / audio_path)
        tts_meta = {"engine": tts.name, "voice": getattr(tts, "voice", None), "rate": tts.rate,
                    "snr_db": p.hard_snr_db if hard else None, "sample_rate": speech.SAMPLE_RATE,
                    "silence_ms": p.silence_ms, "audio_path": audio_path,
                    "input_pinyin": tts.spoken_form(record["reference"]) if lang == "zh" else None}
        asr_meta = {"engine": asr.name, "beam_size": p.beam_size, "language": lang, "punct": "model", "itn": "none",
                    "script": getattr(asr, "script", None)}
        yield Measured({"audio seconds": seconds, "tts cpu seconds": t1 - t0, "asr cpu seconds": t2 - t1})
        yield {**record, "hypothesis_raw": hyp, "tts": json.dumps(tts_meta, ensure_ascii=False, sort_keys=True),
               "asr": json.dumps(asr_meta, sort_keys=True), "audio_seconds": round(seconds, 3)}

    def summarize_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        out = dict(sums)
        cpu = sums.get("tts cpu seconds", 0) + sums.get("asr cpu seconds", 0)
        if cpu:
            out["audio seconds per cpu second"] = sums.get("audio seconds", 0) / cpu
        return out


INSTRUCTIONS = {
    "zh": {"text": "下面是一段语音识别的转写结果，其中可能有错字、漏字、多字、标点错误和数字格式错误。"
                   "请改正所有错误，只输出改正后的全文。",
           "json": "下面是一段语音识别的转写结果，其中可能有错字、漏字、多字、标点错误和数字格式错误。请找出所有错误，"
                   "以JSON列表输出，每项为{\"wrong\": 原文片段, \"right\": 改正片段, \"hyp_start\": 片段起始位置}。",
           "segment": "上面是完整的转写结果，供参考。只改正下面这一段：",
           "transcript": "转写结果："},
    "en": {"text": "Below is a speech recognition transcript. It may contain wrong words, missing or extra words, "
                   "punctuation errors and numbers written out. Correct every error and output only the corrected "
                   "text.",
           "json": "Below is a speech recognition transcript. It may contain wrong words, missing or extra words, "
                   "punctuation errors and numbers written out. List every error as JSON: [{\"wrong\": span, "
                   "\"right\": correction, \"hyp_start\": offset}].",
           "segment": "The whole transcript is above, for context. Correct only this part of it:",
           "transcript": "Transcript:"},
}


class PairsParams(StageParams):
    segments: bool = Field(True, description="also the segment setting (spec 4.10)")
    max_sentences: int = Field(5, ge=1, description="segment: k sentences, k uniform in 1..this [CoC: 1-5]")
    segment_chars: int = Field(300, ge=1, description="segment: closed at about this many characters [300]")
    min_length_ratio: float = Field(0.5, gt=0, description="hypothesis/reference length below this: a "
                                    "hallucination or a cut, dropped [0.5]")
    max_length_ratio: float = Field(2.0, gt=0, description="above this: dropped [2.0]")
    drop_zero_edit: float = Field(0.0, ge=0, le=1, description="share of documents without an edit dropped [0.0]")
    max_repetition: float | None = Field(None, gt=0, description="hypothesis compressing this many times better than "
                                         "its reference (zlib; Whisper's loop test, relative): a looped transcript, "
                                         "dropped [off; 1.5 drops espeak Mandarin's loops]")
    instructions: dict[str, str] = Field(default_factory=dict, description="prompt wording in place of the built-in "
                                         "one for the language (spec 4.11: templates in config): any of text, json, "
                                         "segment, transcript")

    @model_validator(mode="after")
    def _known_keys(self):
        unknown = set(self.instructions) - set(INSTRUCTIONS["en"])
        if unknown:
            raise ValueError(f"instructions: unknown keys {sorted(unknown)}; use {sorted(INSTRUCTIONS['en'])}")
        return self


@register
class ChftPairs(RecordStage):
    """Pairs, types and CER of each transcript; one full-text record and its segment records."""

    name = "chft_pairs"
    Params = PairsParams
    input_schema = TRANSCRIBED
    expands = True

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return CHFT_RECORD

    def process(self, record: dict) -> Iterator[Outcome]:
        p: PairsParams = self.params
        lang, ref = record["language"], record["reference"]
        hyp = core.canonical(record["hypothesis_raw"] or "")
        failed = not hyp
        ratio = len(hyp) / max(len(ref), 1)
        if not failed and not p.min_length_ratio <= ratio <= p.max_length_ratio:
            yield Dropped(record["id"], "length ratio", f"hypothesis/reference {ratio:.2f}, kept: "
                          f"[{p.min_length_ratio}, {p.max_length_ratio}] (spec 6: hallucinated or cut output)")
            return
        repetition = core.compression_ratio(hyp) / core.compression_ratio(ref) if hyp else 0.0
        if p.max_repetition is not None and repetition > p.max_repetition:
            yield Dropped(record["id"], "looped transcript", f"the hypothesis compresses {repetition:.2f} times better "
                          f"than its reference (> {p.max_repetition}): a decoding loop (spec 6)")
            return
        pairs = core.pairs_between(hyp, ref, lang)
        if not pairs and _unit(record["id"] + "/zero", self.seed) < p.drop_zero_edit:
            yield Dropped(record["id"], "no edit", "a zero-edit document, dropped by drop_zero_edit")
            return
        cer = core.cer(hyp, ref)
        split = record["split"]
        yield Measured({"documents": 1, "cer sum": cer, "repetition > 1.5": int(repetition > 1.5),
                        "reference chars": len(ref), "char edits": cer * len(ref),
                        f"documents:{split}": 1, f"cer sum:{split}": cer,
                        **{f"pairs:{t}": sum(1 for x in pairs if x.type == t) for t in core.PAIR_TYPES}})
        full = self._record(record, "full_text", hyp, ref, pairs, hyp, failed, cer, {"repetition": repetition})
        yield full
        if not p.segments or failed:
            return
        segs = core.segments(hyp, ref, pairs, lang, seeded(self.seed, record["id"], "segments"), p.max_sentences,
                             p.segment_chars)
        for k, s in enumerate(segs):
            h, r = hyp[s.hyp_start:s.hyp_end], ref[s.ref_start:s.ref_end]
            yield self._record(record, "segment", h, r, list(s.pairs), hyp, False, core.cer(h, r),
                               {"segment_index": k, "n_segments": len(segs), "sentence_range": list(s.sentences),
                                "hyp_offset": s.hyp_start, "ref_offset": s.ref_start, "repetition": repetition})

    def _record(self, record, setting, hyp, ref, pairs, full_hyp, failed, cer, extra=None) -> dict:
        lang = record["language"]
        words = {**INSTRUCTIONS.get(lang, INSTRUCTIONS["en"]), **self.params.instructions}
        target_json = json.dumps([{"wrong": x.hyp_span, "right": x.ref_span, "hyp_start": x.hyp_start} for x in pairs],
                                 ensure_ascii=False)
        if setting == "full_text":
            context, ask = hyp, ""
        else:
            context, ask = full_hyp, f"{words['segment']}\n{hyp}"
        body = f"{words['transcript']}\n{context}" + (f"\n\n{ask}" if ask else "")
        prompt_text = f"{words['text']}\n\n{body}"
        prompt_json = f"{words['json']}\n\n{body}"
        rid = record["id"] if setting == "full_text" else f"{record['id']}#{extra['segment_index']}"
        length = longbench_length(lang, context, ask, ref)
        row = {
            "id": rid, "_id": item_hash(rid), "input": f"{words['text']}" + (f"\n{ask}" if ask else ""),
            "context": context, "answers": [ref], "length": length, "dataset": f"chft_{setting}",
            "language": lang, "all_classes": None, "length_bucket": None, "length_tokens": None,
            "meta": json.dumps({"seed": self.seed, "source": record.get("source")}, sort_keys=True),
            "doc_id": record["id"], "split": record["split"], "setting": setting, "reference": ref,
            "hypothesis": hyp, "reference_raw": record["reference_raw"], "hypothesis_raw": record["hypothesis_raw"],
            "pairs": [x.as_dict() for x in pairs], "target_text": ref, "target_json": target_json,
            "prompt_text": prompt_text, "prompt_json": prompt_json, "tts": record["tts"], "asr": record["asr"],
            "cer_before": cer, "n_chars": len(ref), "n_pairs": len(pairs), "asr_failed": failed, "repetition": None,
            "segment_index": None, "n_segments": None, "sentence_range": None, "hyp_offset": 0, "ref_offset": 0,
        }
        return {**row, **(extra or {})}

    def summarize_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        out = dict(sums)
        if sums.get("reference chars"):
            out["cer_before (micro)"] = sums["char edits"] / sums["reference chars"]
        if sums.get("documents"):
            out["cer_before (mean)"] = sums["cer sum"] / sums["documents"]
        for split in SPLITS:
            if sums.get(f"documents:{split}"):
                out[f"cer_before (mean):{split}"] = sums[f"cer sum:{split}"] / sums[f"documents:{split}"]
        return out
