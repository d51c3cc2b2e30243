"""The Indonesian "simple hack" as stages (spec ../shared/specs/indonesian-stopword-hack.md):
``hack_vocabulary`` counts words over the training split (stats, then decide: the driver sees one
small list of distinct words per document and answers each document's rare words and label id),
and ``text_hacks`` applies each configured hack and truncates to every length on the workers,
one record per (document, hack, length). The pure parts are in :mod:`stages.idhack.core`."""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from schemas import REGISTRY, RecordSchema
from stages import register
from stages.base import (
    Dropped,
    GlobalContext,
    GlobalResult,
    GlobalStage,
    Measured,
    Outcome,
    RecordStage,
    Rejected,
    Resources,
    StageParams,
    TokenizerRef,
    metadata_of,
)
from stages.idhack import core

DOCUMENT_IN = RecordSchema("idhack_input", 1, (pa.field("id", pa.string(), nullable=False),
                                               pa.field("text", pa.string()), pa.field("metadata", pa.string())))
_RARE = pa.field("rare_words", pa.list_(pa.string()))
_LABEL_ID = pa.field("label_id", pa.int32())

HACKED = REGISTRY.register(RecordSchema("hacked_text", 1, (
    pa.field("id", pa.string(), nullable=False),  # <document id>/<hack>/<length>
    pa.field("doc_id", pa.string()),
    pa.field("label", pa.string()),
    pa.field("label_id", pa.int32()),
    pa.field("split", pa.string()),
    pa.field("hack", pa.string()),
    pa.field("hacks", pa.string()),  # JSON {punctuation, stopwords, low_freq, recurring: remove | keep}
    pa.field("stopword_list", pa.string()),
    pa.field("min_freq", pa.int32()),
    pa.field("max_len", pa.int32()),
    pa.field("tokenizer", pa.string()),
    pa.field("text", pa.string()),  # the hacked words, space-joined, as far as the kept tokens reach
    pa.field("n_words_in", pa.int32()),
    pa.field("n_words_out", pa.int32()),  # after the hack, before truncation
    pa.field("n_words_kept", pa.int32()),  # within the first max_len tokens
    pa.field("n_subtokens_full", pa.int32()),
    pa.field("n_subtokens_kept", pa.int32()),
    pa.field("truncated", pa.bool_()),
    pa.field("fallback", pa.bool_()),
    pa.field("content_kept", pa.float64()),  # share of the input's content-word occurrences kept
    pa.field("content_types_kept", pa.float64()),  # share of its distinct content words kept
    pa.field("input_ids", pa.list_(pa.int32())),
), doc="An Indonesian document shortened by one hack and truncated to one length."))


def label_and_split(record: dict) -> tuple[str | None, str]:
    """The label (a ``label`` field, else metadata's) and split (``train`` when none is given)."""
    meta = metadata_of(record)
    label = record.get("label", meta.get("label"))
    split = record.get("split") or meta.get("split") or "train"
    return (str(label) if label is not None else None), str(split)


class VocabularyParams(StageParams):
    min_freq: int = Field(2, ge=1, description="a word seen fewer times than this in the training split is rare "
                          "[spec 4.4: 2; ours]")
    train_split: str = Field("train", description="the split whose words are counted (never dev or test)")


@register
class HackVocabulary(GlobalStage):
    """Word frequencies over the training split, and for each document its rare words (unseen in
    training counts as 0) and its label's number among the sorted labels.

    The frequencies are tallies: each worker counts its shard's training words, the driver merges
    the counts (one row per word type, never words per document) and keeps the frequent words; that
    vocabulary goes back to the workers once (``shared``), where each document's rare words are its
    distinct words outside it. The driver's summaries are a label and a split per document."""

    name = "hack_vocabulary"
    Params = VocabularyParams
    input_schema = DOCUMENT_IN
    tallies = True
    _frequent: frozenset[str] | None = None

    def summary_fields(self, upstream: RecordSchema) -> tuple[pa.Field, ...]:
        return (pa.field("label", pa.string()), pa.field("split", pa.string()))

    def summarize(self, record: dict) -> dict:
        label, split = label_and_split(record)
        return {"label": label, "split": split}

    @staticmethod
    def _distinct_words(record: dict) -> Counter:
        return Counter(w.lower() for w in core.words(record.get("text") or "") if not core.is_punct(w))

    def tally(self, record: dict) -> dict[str, int]:
        """``n\t<word>``: occurrences in training documents; ``d\t<word>``: documents holding the
        word, any split (for the mean of rare words per document)."""
        counts = self._distinct_words(record)
        out = {f"d\t{w}": 1 for w in counts}
        if label_and_split(record)[1] == self.params.train_split:
            out.update({f"n\t{w}": n for w, n in counts.items()})
        return out

    def added_fields(self) -> tuple[pa.Field, ...]:
        return (_RARE, _LABEL_ID)

    def decide(self, summaries: pa.Table, ctx: GlobalContext) -> GlobalResult:
        p: VocabularyParams = self.params
        tallies = ctx.tallies
        kind = pc.utf8_slice_codeunits(tallies["key"], 0, 2)
        word = pc.utf8_slice_codeunits(tallies["key"], 2)
        is_train = pc.equal(kind, "n\t")
        train_words, train_n = pc.filter(word, is_train), pc.filter(tallies["n"], is_train)
        frequent = pc.filter(train_words, pc.greater_equal(train_n, p.min_freq))
        is_df = pc.equal(kind, "d\t")
        df_words, df = pc.filter(word, is_df), pc.filter(tallies["n"], is_df)
        rare_occurrences = pc.sum(pc.filter(df, pc.invert(pc.is_in(df_words, value_set=frequent)))).as_py() or 0
        labels = sorted({x for x in summaries["label"].to_pylist() if x is not None})
        index = {x: k for k, x in enumerate(labels)}
        label_id = pa.array([index.get(x) for x in summaries["label"].to_pylist()], pa.int32())
        n_train = int(pc.sum(pc.fill_null(pc.equal(summaries["split"], p.train_split), False).cast(pa.int64()))
                      .as_py() or 0)
        # rare_words are made on the workers from the shared vocabulary (receive_shared, apply)
        rare = pa.nulls(len(summaries), _RARE.type)
        return GlobalResult(columns={"rare_words": rare, "label_id": label_id},
                            shared=pa.table({"word": frequent}), metrics={
            "train documents": n_train, "train word types": len(train_words), "frequent word types": len(frequent),
            "labels": len(labels), "rare words per document (mean)": rare_occurrences / max(len(summaries), 1)})

    def receive_shared(self, shared) -> None:
        if shared is None:  # never an empty vocabulary: every word would be rare
            raise RuntimeError("hack_vocabulary: its step left no shared vocabulary (a run of an older "
                               "longforge?) -> rerun with --overwrite")
        self._frequent = frozenset(shared.column("word").to_pylist())

    def apply(self, record: dict, answer: dict, dropped: Dropped | None) -> Iterator[Outcome]:
        if dropped is not None:
            yield dropped
            return
        if self._frequent is None:
            raise RuntimeError("hack_vocabulary: the vocabulary was not received before apply")
        rare = sorted(w for w in self._distinct_words(record) if w not in self._frequent)
        yield {**record, "rare_words": rare, "label_id": answer["label_id"]}


def _hack_of(entry) -> core.Hack:
    if isinstance(entry, str):
        if entry not in core.PRESETS:
            raise ValueError(f"hack {entry!r}: one of {', '.join(core.PRESETS)}, or a mapping such as "
                             "{name: mine, stopwords: remove, punctuation: remove}")
        return core.PRESETS[entry]
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ValueError("a hack is a preset name or a mapping with a 'name' and remove/keep per removal")
    unknown = set(entry) - {"name", *core.HACKS}
    if unknown:
        raise ValueError(f"hack {entry['name']!r}: unknown keys {sorted(unknown)}; use {', '.join(core.HACKS)}")
    flags = {}
    for h in core.HACKS:
        value = entry.get(h, "keep")
        if value not in ("remove", "keep"):
            raise ValueError(f"hack {entry['name']!r}: {h} is {value!r}; use remove or keep")
        flags[h] = value == "remove"
    return core.Hack(entry["name"], **flags)


@functools.lru_cache(maxsize=64)
def _hacks_json(hack: core.Hack) -> str:
    return json.dumps(hack.as_dict(), sort_keys=True)


class HacksParams(StageParams):
    hacks: list[str | dict] = Field(["none", "stopwords"], description="presets (none, stopwords, punctuation, "
                                    "low_freq, recurring) or mappings {name, punctuation/stopwords/low_freq/"
                                    "recurring: remove|keep}; none = plain truncation [none, stopwords]")
    grid: bool = Field(False, description="all 16 remove/keep combinations instead (spec 4.8, ablations)")
    lengths: list[int] = Field([512, 256, 128], description="first L subword tokens, special tokens included")
    tokenizer: TokenizerRef = Field("minilm", description="a tokenizer name (minilm: BERT WordPiece with [CLS]/[SEP], "
                           "smollm2) or a tokenizer.json [UNVERIFIED: the paper's is unknown]")
    stopwords: str = Field("sastrawi", description="sastrawi (123 words, the default), spacy (757: it also "
                           "removes negations such as bukan, jangan and content words such as tahun, besar), "
                           "stopwordsiso (758), or a file [spec: sastrawi]")
    min_words: int = Field(16, ge=0, description="fewer words left: the unmodified words, flagged fallback [16]")
    lowercase: bool = Field(False, description="lower-case the output words [false]")
    keep_ids: bool = Field(True, description="write the kept token ids (input_ids)")

    @field_validator("hacks")
    @classmethod
    def _hacks_known(cls, v):
        names = [_hack_of(h).name for h in v]
        if len(set(names)) != len(names):
            raise ValueError(f"hack names repeat: {names}")
        return v

    @field_validator("lengths")
    @classmethod
    def _lengths_positive(cls, v):
        if not v or any(x < 3 or x > 1_000_000 for x in v) or len(set(v)) != len(v):
            raise ValueError("lengths: distinct numbers of tokens, each from 3 to 1,000,000")
        return v

    @field_validator("stopwords")
    @classmethod
    def _list_known(cls, v):
        core.stopword_list(v)  # a name or a file that exists
        return v

    def hack_list(self) -> list[core.Hack]:
        return core.grid() if self.grid else [_hack_of(h) for h in self.hacks]


@register
class TextHacks(RecordStage):
    """Each hack, then head truncation to each length: one record per (document, hack, length),
    with what the hack removed and what share of the document's content words the truncation kept."""

    name = "text_hacks"
    Params = HacksParams
    input_schema = DOCUMENT_IN
    expands = True
    _min_freq: int | None = None

    def __init__(self, params: HacksParams | None = None, seed: int = 0):
        super().__init__(params, seed)
        self._word_info: dict[str, tuple[str, bool]] = {}  # word -> (lower-cased, content word), once each
        if any(h.low_freq for h in self.params.hack_list()):  # checked before work: hack_vocabulary first
            self.input_schema = DOCUMENT_IN.extended("idhack_input+rare_words", 1, (_RARE,))

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return HACKED

    def see_upstream(self, upstream: list) -> None:
        vocab = [st for _, st in upstream if st.name == "hack_vocabulary"]
        self._min_freq = vocab[-1].params.min_freq if vocab else None

    def resources(self) -> Resources:
        return Resources(batch_size=64)

    @functools.cached_property
    def _encoder(self) -> core.PieceEncoder:
        from tokenizers import Tokenizer

        from gpu_jobs.models import tokenizer_path

        tok = Tokenizer.from_file(str(tokenizer_path(self.params.tokenizer)))
        tok.no_truncation()
        tok.no_padding()
        return core.PieceEncoder(tok)

    def _lowered_and_content(self, ws: list[str], stops: frozenset[str]) -> tuple[list[str], list[bool]]:
        info = self._word_info
        lowered, content = [], []
        for w in ws:
            found = info.get(w)
            if found is None:
                found = (w.lower(), core.is_content(w, stops))
                if len(info) < 200_000:
                    info[w] = found
            lowered.append(found[0])
            content.append(found[1])
        return lowered, content

    def process(self, record: dict) -> Iterator[Outcome]:
        p: HacksParams = self.params
        text = record.get("text")
        ws = core.words(text) if isinstance(text, str) else []
        if not ws:
            yield Rejected(record["id"], "empty document", "no words in 'text'")
            return
        stops, list_name = core.stopword_list(p.stopwords)
        label, split = label_and_split(record)
        rare = record.get("rare_words") or ()
        lengths = sorted(p.lengths, reverse=True)
        measured: dict[str, float] = {"documents": 1, "words in": len(ws)}
        lowered, is_content = self._lowered_and_content(ws, stops)
        n_content = sum(is_content)
        n_content_types = len({w for w, c in zip(lowered, is_content, strict=True) if c})
        for hack in p.hack_list():
            done = core.apply_hack(ws, hack, stops, rare, p.min_words, lowered)
            out_words = [lowered[i] if p.lowercase else ws[i] for i in done.kept]
            hacked = " ".join(out_words)
            cuts = core.truncations(self._encoder, hacked, lengths)
            occ_upto, types_upto = core.content_kept_prefixes(lowered, is_content, done.kept)
            h = hack.name
            hacks_json = _hacks_json(hack)
            measured |= {f"words out:{h}": len(done.kept), f"fallback:{h}": int(done.fallback),
                         f"subtokens full:{h}": cuts[lengths[0]].n_full,
                         **{f"removed {step}:{h}": n for step, n in done.removed.items()}}
            for length in lengths:
                cut = cuts[length]
                if n_content:
                    upto = min(cut.words_kept, len(done.kept))
                    occ = occ_upto[upto] / n_content
                    types = types_upto[upto] / n_content_types
                else:
                    occ = types = 1.0
                measured |= {f"content kept sum:{h}:{length}": occ, f"content types kept sum:{h}:{length}": types,
                             f"subtokens kept:{h}:{length}": len(cut.ids),
                             f"truncated:{h}:{length}": int(cut.n_full > length)}
                yield {
                    "id": f"{record['id']}/{h}/{length}", "doc_id": record["id"], "label": label,
                    "label_id": record.get("label_id"), "split": split, "hack": h,
                    "hacks": hacks_json, "stopword_list": list_name,
                    "min_freq": self._min_freq if hack.low_freq else None, "max_len": length,
                    "tokenizer": p.tokenizer, "text": hacked[:cut.chars_kept], "n_words_in": len(ws),
                    "n_words_out": len(done.kept), "n_words_kept": cut.words_kept, "n_subtokens_full": cut.n_full,
                    "n_subtokens_kept": len(cut.ids), "truncated": cut.n_full > length, "fallback": done.fallback,
                    "content_kept": occ, "content_types_kept": types,
                    "input_ids": cut.ids if p.keep_ids else None,
                }
        yield Measured(measured)

    def summarize_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """Means per hack (and length) of the sums: words and tokens before and after, content kept."""
        out = dict(sums)
        n = sums.get("documents") or 0
        if not n:
            return out
        out["words in (mean)"] = sums["words in"] / n
        for key, value in sums.items():
            name, _, rest = key.partition(":")
            if name in ("words out", "subtokens full", "subtokens kept") or name.startswith("removed "):
                out[f"{name} (mean):{rest}"] = value / n
            elif name in ("content kept sum", "content types kept sum"):
                out[f"{name.replace(' sum', '')} (mean):{rest}"] = value / n
            elif name in ("truncated", "fallback"):
                out[f"{name} (share):{rest}"] = value / n
            if name == "subtokens full" and sums.get(f"words out:{rest}"):
                out[f"subtokens per word:{rest}"] = value / sums[f"words out:{rest}"]  # spec 4.9's survey
        return out
