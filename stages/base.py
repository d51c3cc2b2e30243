"""The stage contract: a name, strict typed parameters, declared schemas, and plain-Python work.

Four shapes cover every product, and none of them puts the payload on the driver:

* :class:`RecordStage` (map / flat-map / filter) looks at one record at a time, on the workers;
  model stages are record stages whose model loads once per worker in ``setup()``;
* :class:`CollectionStage` needs every record of a key. It is split the Data-Juicer way into
  statistics and a decision: ``keys()`` maps each record to grouping keys, ``decide()`` looks at
  one group and names the records to drop;
* :class:`GlobalStage` sees the small columns it declares of every record (ids, neighbours,
  lengths) and answers with columns joined back onto the records on the workers;
* :class:`GroupStage` sees the records of one group (a bucket, a packing stream), in a
  deterministic order, on a worker, and emits new records.

Each runner executes these with its own primitives, through the engine's one outcome
classification, so a stage never depends on the engine that runs it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

import pyarrow as pa
from pydantic import AfterValidator, BaseModel, ConfigDict

from schemas import RecordSchema


def metadata_of(record: dict) -> dict:
    """A document record's ``metadata`` JSON as a dict ({} when absent or not an object)."""
    try:
        m = json.loads(record.get("metadata") or "{}")
    except ValueError:
        return {}
    return m if isinstance(m, dict) else {}


def _tokenizer_ref(name: str) -> str:
    from gpu_jobs.models import check_tokenizer_ref

    return check_tokenizer_ref(name)


#: A stage parameter naming a tokenizer (smollm2, minilm, a tokenizer.json or its folder), checked
#: while the pipeline file is validated.
TokenizerRef = Annotated[str, AfterValidator(_tokenizer_ref)]


class StageParams(BaseModel):
    """Base of every parameter model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Rejected:
    """A record that is malformed for this stage (bad input). ``reason`` is a category to count by;
    ``payload`` keeps the record (or the raw input line) so that nothing is lost."""

    record_id: str
    reason: str
    detail: str = ""
    payload: str | None = None


@dataclass(frozen=True)
class Dropped:
    """A record removed on purpose (a filter or dedup decision)."""

    record_id: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Truncated:
    """A record that is in the output only in part (packing cut its tail): it is counted as used,
    and this note in the rejects output says what of it is missing."""

    record_id: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class SideRow:
    """A row for one of the stage's side tables (``Stage.side_tables``), written next to the shard
    on the worker and published as an artifact of its own: a model stage's scores with their
    model and revision, a cut's log. The driver never gathers them."""

    table: str
    row: dict


@dataclass(frozen=True)
class Measured:
    """Numbers that add up over records and tasks (tokens kept, sequences made): summed per stage on
    each worker, kept in the task's marker, and turned into the stage's catalog metrics on the driver
    by :meth:`Stage.summarize_metrics`. Never a record."""

    values: dict[str, float]


Outcome = dict | Rejected | Dropped | SideRow | Measured


@dataclass(frozen=True)
class Resources:
    """What a per-record stage needs where it runs. ``model``: it loads a model in ``setup()``
    (once per worker process), so the engine checkpoints each of its batches and a rerun never
    computes a finished batch again. ``device``: cpu, or gpu when one is present."""

    batch_size: int = 256
    device: str = "cpu"
    model: bool = False
    #: ``process_batch`` spends its time in a library that releases the GIL (a Rust tokenizer):
    #: the engine computes the next batch in a thread while this one's records go down the
    #: stages after it, so those stages cost no wall time on a machine with a second core.
    ahead: bool = False


@dataclass(frozen=True)
class Services:
    """What the engine hands a stage where it runs, typed (never the catalog, which only the driver
    writes): ``generation_cache``, the folder of the run's generation cache (see
    :class:`gpu_jobs.generate.FileGenerationCache`), shared by the workers and synced with the
    catalog by the driver."""

    generation_cache: Path | None = None
    output_dir: Path | None = None  # files trainers read directly (decomposition's bucket token files)


class Stage:
    """Common part of every shape. Subclasses set ``name``, ``Params`` and ``input_schema``."""

    name: ClassVar[str]
    Params: ClassVar[type[StageParams]] = StageParams
    input_schema: ClassVar[RecordSchema]
    shape: ClassVar[str]
    #: True when one input record may yield several output records.
    expands: ClassVar[bool] = False

    #: True when the stage generates text and wants the run's generation cache (``Services``).
    uses_generations: ClassVar[bool] = False

    #: A field whose value names the output files a record goes to (``data/train-<label>-*``), kept
    #: while later stages keep the record type: decomposition's buckets. None: one set of files.
    file_label_field: ClassVar[str | None] = None

    def __init__(self, params: StageParams | None = None, seed: int = 0):
        self.params = params if params is not None else self.Params()
        self.seed = seed
        self.services = Services()

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        """The schema this stage writes, given what the stage before it produced."""
        return upstream

    @staticmethod
    def adding(upstream: RecordSchema, tag: str, fields: tuple) -> RecordSchema:
        """``upstream`` plus ``fields``, named e.g. ``document+tokens@1`` so plans show what was added."""
        name = upstream.name if upstream.name.endswith(f"+{tag}") else f"{upstream.name}+{tag}"
        return upstream.extended(name, upstream.version, fields)

    def see_upstream(self, upstream: list[tuple[str, Stage]]) -> None:
        """Called by the planner with the (label, stage) pairs before this one: a stage that records
        how its inputs were made (GATEAU: the scoring models and settings) takes it from here."""

    def side_tables(self) -> dict[str, RecordSchema]:
        """Side tables this stage writes (name -> schema); their rows come as :class:`SideRow` outcomes."""
        return {}

    def file_label(self, value: Any) -> str:
        """The label of the output files for a record whose ``file_label_field`` is ``value``."""
        return str(value)

    def summarize_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """The stage's catalog metrics from the sums of its :class:`Measured` outcomes (or, for a
        group stage, of every group's ``metrics``) over every task: ratios and means go here."""
        return sums

    def artifacts(self, ctx: GlobalContext) -> dict[str, pa.Table]:
        """Small tables made on the driver once every task of the stage is done, from its parameters
        (UtK's markers), published next to the output; ``ctx.output_dir`` takes files trainers read."""
        return {}

    def setup(self) -> None:
        """Load heavy resources (models, tokenizers) once per worker, not per record."""

    def __getstate__(self) -> dict:
        # Loaded resources are rebuilt by setup() on the worker; only configuration travels.
        return {"params": self.params, "seed": self.seed}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["params"], state["seed"])


class RecordStage(Stage):
    shape = "per-record"

    def resources(self) -> Resources:
        """Records per ``process_batch`` call, device, and whether a model is loaded."""
        return Resources()

    def process(self, record: dict) -> Iterator[Outcome]:
        raise NotImplementedError

    def process_batch(self, records: list[dict]) -> list[list[Outcome]]:
        """Outcomes of each record of a batch. Override when a library is faster on batches
        (a tokenizer's ``encode_batch``); the result must equal calling :meth:`process` on each."""
        return [list(self.process(r)) for r in records]


class CollectionStage(Stage):
    shape = "whole-collection"

    def keys(self, record: dict) -> Iterable[tuple[str, Any]]:
        """Grouping keys of a record, each with a small JSON-serialisable value that ``decide`` sees:
        the record's id, or a tuple whose first item is the id (the engine keeps one copy of records
        that share an id and a key before ``decide`` runs)."""
        raise NotImplementedError

    def decide(self, key: str, values: list[Any]) -> Iterable[Dropped]:
        """A :class:`Dropped` for each record of this group that must go."""
        raise NotImplementedError


@dataclass
class GlobalContext:
    """What a global stage may use besides its summaries: the seed, and where the driver keeps
    plots and files that trainers read directly (decomposition's schedule)."""

    seed: int = 0
    tallies: Any = None  # pyarrow Table (key, n) sorted by key: the stage's tallies summed over every record
    files_dir: Path | None = None
    output_dir: Path | None = None
    work_dir: Path | None = None  # scratch space of the step (a Beam job's files)


@dataclass
class GlobalResult:
    """A global stage's answer, aligned with the summaries it was given (row k is record k):
    ``columns``, new fields for every record (joined back onto the records on the workers);
    ``dropped``, row -> why that record goes; ``artifacts``, small tables published next to the
    output; ``metrics`` for the catalog."""

    columns: dict[str, Any] = field(default_factory=dict)  # field name -> pyarrow Array, one value per row
    dropped: dict[int, Dropped] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)  # name -> pyarrow Table
    metrics: dict[str, float] = field(default_factory=dict)
    #: One table every worker gets before it applies the answer (``GlobalStage.receive_shared``):
    #: what is the same for every record (a vocabulary), sent once instead of once per record.
    shared: Any = None


class GlobalStage(Stage):
    """Sees only a small summary of every record (its id and the fields ``summarize`` returns:
    lengths, neighbour lists, scores, a vector) and decides from all of them at once: a position
    in an order, a keep flag, a schedule, a selection. The payload (text, token ids, messages)
    stays on the workers: the summaries are written there, the driver runs ``decide``, and the
    workers join its columns back onto the records by place."""

    shape = "global"
    #: True for a stage whose answer never drops a record nor adds a column (it computes artifacts
    #: and metrics: a schedule): its records pass as they are, so no pass over them applies it.
    observes = False

    def summary_fields(self, upstream: RecordSchema) -> tuple[pa.Field, ...]:
        """Fields of the summary besides ``id`` (by default, the record's own fields named ``reads``)."""
        have = {f.name: f for f in upstream.fields}
        return tuple(have[n] for n in self.reads())

    def reads(self) -> tuple[str, ...]:
        return ()

    def summarize(self, record: dict) -> dict:
        """The summary of one record, on the worker."""
        return {n: record.get(n) for n in self.reads()}

    def added_fields(self) -> tuple[pa.Field, ...]:
        return ()

    #: True for a stage that sums counts over the collection (:meth:`tally`).
    tallies: bool = False

    def tally(self, record: dict) -> dict[str, int]:
        """Counts this record adds (key -> n), on the worker. The workers sum them over their
        shard, the driver merges the shards' sums into ``ctx.tallies``: a collection-wide count
        (word frequencies) reaches the driver as one row per key, not as words per record."""
        return {}

    def receive_shared(self, shared: Any) -> None:
        """On the worker, before ``apply``: the table the decision shares with every record
        (``GlobalResult.shared``)."""

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return self.adding(upstream, self.name, self.added_fields()) if self.added_fields() else upstream

    def decide(self, summaries: Any, ctx: GlobalContext) -> GlobalResult:
        """``summaries``: a pyarrow Table (``id`` + the summary fields), one row per record, in an
        order that is the same on every runner."""
        raise NotImplementedError

    def apply(self, record: dict, answer: dict, dropped: Dropped | None) -> Iterator[Outcome]:
        """On the worker: a record with its row of the answer. By default the record with the added
        columns, or its drop; a stage may reshape the record or write a side table here."""
        if dropped is not None:
            yield dropped
        else:
            yield {**record, **answer}


class GroupStage(Stage):
    """Records grouped by a key the stage computes (a bucket, a range of an order, a pack group),
    each group seen whole, its records sorted by the order the stage gives, emitting new records
    (packs, contexts, bucket sequences). Groups are spread over the workers by key; a worker holds
    one partition of the groups at a time. Outcomes: new records, :class:`Dropped` and
    :class:`Truncated` notes about the inputs (by id), :class:`SideRow`."""

    shape = "per-group"
    expands = True
    #: True: numeric list fields (token ids) reach ``build`` as numpy views of the gathered
    #: partition, not lists of Python ints (a stage that only slices, copies or writes them).
    arrays: bool = False
    #: The type of the place ``group_of`` gives (an int, or a string such as the record's id).
    place_type: pa.DataType = pa.int64()

    def place_form(self) -> str | None:
        """A name for what the place means, when a stage changed it (None: the first meaning). The
        parts an older run wrote with another meaning are written again, never read in that order."""
        return None

    def group_of(self, record: dict) -> tuple[str, int]:
        """(group key, place of the record within its group): a group's records reach ``build``
        in the order of their places."""
        raise NotImplementedError

    def build(self, key: str, records: Iterable[dict], metrics: dict[str, float]) -> Iterator[Outcome | Truncated]:
        """The outcomes of one group. ``records`` is a stream (read once, in place order; the engine
        never holds the group): a stage keeps only what it needs, or makes a list itself where its
        rule needs the whole group. It must read every record. Add to ``metrics`` what sums over
        groups (tokens, contexts)."""
        raise NotImplementedError


def merge_decisions(decisions: Iterable[Dropped]) -> dict[str, Dropped]:
    """One decision per record id; the smallest (reason, detail) wins, so every runner agrees."""
    merged: dict[str, Dropped] = {}
    for d in decisions:
        old = merged.get(d.record_id)
        if old is None or (d.reason, d.detail) < (old.reason, old.detail):
            merged[d.record_id] = d
    return merged


class EvalScorer:
    """How an evaluation set's replies are scored: one per record schema of a set a product builds,
    in the product's package, registered with :func:`stages.register_scorer`. ``longforge eval``
    finds it by the set's record schema (its Parquet files name it), never by a dataset's name."""

    max_tokens: ClassVar[int] = 32  # new tokens of a reply, for ``eval predict``

    def score(self, item: dict, reply: str, target: str = "text") -> dict[str, float]:
        """Per parser 1.0 or 0.0 for one item (``strict``, ``reference``), and any counts the set's
        summary adds up (LIConBench's ``correct``/``made``/``gold``, ChFT's CER)."""
        raise NotImplementedError

    def group(self, item: dict) -> str:
        """What accuracies are reported per: the dataset, and its demonstration order if any."""
        return f"{item['dataset']}/{item['demo_order']}" if item.get("demo_order") else item["dataset"]

    def max_new_tokens(self, item: dict) -> int:
        return self.max_tokens

    def summarize(self, group: str, values: dict[str, list[float]]) -> dict[str, float]:
        """One group's figures from its items' scores (name -> one value per scored item): the
        accuracy of each parser, in %."""
        return {f"accuracy:{group}:{name}": 100 * sum(v) / len(v) for name, v in sorted(values.items())
                if name in ("strict", "reference")}

    @staticmethod
    def micro_prf(prefix: str, group: str, correct: float, made: float, gold: float) -> dict[str, float]:
        """Micro precision, recall and F1 (%) from summed counts, named ``{prefix}precision:{group}``..."""
        p = correct / made if made else 0.0
        r = correct / gold if gold else 0.0
        f1 = "micro_f1" if not prefix else f"{prefix}f1"
        return {f"{prefix}precision:{group}": 100 * p, f"{prefix}recall:{group}": 100 * r,
                f"{f1}:{group}": 100 * (2 * p * r / (p + r) if p + r else 0.0)}

    def describe(self, group: str, metrics: dict[str, float]) -> str:
        """One group's figures as ``eval score`` prints them."""
        return "  ".join(f"{parser} {metrics[f'accuracy:{group}:{parser}']:5.1f}%" for parser in ("strict", "reference")
                         if f"accuracy:{group}:{parser}" in metrics)

