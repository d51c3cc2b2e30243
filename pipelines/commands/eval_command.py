"""``longforge eval score PREDICTIONS --set BUILT_SET``: score a predictions file (JSONL: ``id`` and
``answer``, the model's raw reply) against a built evaluation set (a pipeline's output folder or a
Parquet file of its records), with both parsers of each task: ``strict`` (ours: the first bounded
label, a whole permutation) and ``reference`` (the published evaluators, quirks included, for
comparison with published numbers). Per-item scores go to the catalog's ``scores`` table and the
accuracies per dataset and parser to its ``metrics``, under a run of pipeline ``eval:score``."""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path

from stages.base import EvalScorer


class EvalInputError(ValueError):
    """A predictions file or a set that cannot be scored; the message says which line and how to fix it."""


def read_set(path: str) -> dict[str, dict]:
    import pyarrow.parquet as pq

    p = Path(path).expanduser()
    target = p / "data" if (p / "data").is_dir() else p
    if not target.exists():
        raise EvalInputError(f"--set '{path}': no such folder or file (give a pipeline's output folder or a Parquet "
                             "file of its records)")
    if target.is_dir() and not any(target.rglob("*.parquet")):
        raise EvalInputError(f"--set '{path}': holds no Parquet files (give a pipeline's output folder or a Parquet "
                             "file of its records)")
    if target.is_file() and target.suffix.lower() != ".parquet":
        raise EvalInputError(f"--set '{path}': not a Parquet file (give a pipeline's output folder or a Parquet "
                             "file of its records; the predictions go to --predictions)")
    try:
        table = pq.read_table(str(target))
    except Exception as e:  # noqa: BLE001 - Arrow's many error types: the file is not a readable set
        raise EvalInputError(f"--set '{path}': cannot be read as Parquet ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:200]})") from None
    missing = {"id", "dataset", "answers"} - set(table.column_names)
    if missing:
        raise EvalInputError(f"--set '{path}': not an evaluation set (no {', '.join(sorted(missing))} column)")
    rows = table.to_pylist()
    return {r["id"]: r for r in rows}


def read_predictions(path: str) -> dict[str, str]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise EvalInputError(f"predictions file '{path}' does not exist")
    out: dict[str, str] = {}
    with open(p, "rb") as f:
        lines = list(enumerate(f, 1))
    for k, raw_line in lines:
        try:
            line = raw_line.decode("utf-8-sig" if k == 1 else "utf-8")  # a byte-order mark is no part of it
        except UnicodeDecodeError as e:
            raise EvalInputError(f"{path}:{k}: not UTF-8 (byte {e.start}: {e.reason}); save the file as UTF-8") \
                from None
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except ValueError as e:
            raise EvalInputError(f"{path}:{k}: not JSON ({e}); fix or remove the line") from None
        if not isinstance(raw, dict):
            raise EvalInputError(f"{path}:{k}: a {type(raw).__name__}, not an object with 'id' and 'answer'")
        answer = next((raw[key] for key in ("answer", "prediction", "pred", "response") if key in raw), None)
        if "id" not in raw or not isinstance(answer, str):
            raise EvalInputError(f"{path}:{k}: needs an 'id' and the reply as a string in 'answer'")
        if str(raw["id"]) in out:
            raise EvalInputError(f"{path}:{k}: id {raw['id']!r} again; one prediction per item")
        out[str(raw["id"])] = answer
    return out


def set_scorer(path: str, schema: str | None = None) -> EvalScorer:
    """The scorer of a built set, found through the product that made it: its Parquet files name
    their record schema (``tsort_item@1``, or ``tsort_item+scores@1`` after a stage that added
    fields), and the product registered a scorer for it. ``schema`` names it for files that do not
    (a copy saved by ``datasets`` drops the name)."""
    import pyarrow.parquet as pq

    from stages import all_scorers

    p = Path(path).expanduser()
    target = p / "data" if (p / "data").is_dir() else p
    files = [target] if target.is_file() else \
        [f for f in sorted(target.rglob("*.parquet"))
         if not any(part.startswith(("_", ".")) for part in f.relative_to(target).parts)]  # as read_set reads
    named = {(pq.read_schema(str(f)).metadata or {}).get(b"longforge.schema", b"").decode() for f in files}
    if len(named - {""}) > 1:
        raise EvalInputError(f"--set '{path}': its files hold records of {len(named - {''})} schemas "
                             f"({', '.join(sorted(named - {''}))}) -> score one set at a time")
    ref = schema or next(iter(named - {""}), "")
    if schema and named - {"", schema} and _base(next(iter(named - {""}))) != _base(schema):
        raise EvalInputError(f"--set '{path}': its files name {', '.join(sorted(named - {''}))}, not --schema {schema}")
    scorers = all_scorers()
    scorer = scorers.get(ref) or scorers.get(_base(ref))
    if scorer is None:
        what = ref or "of no record schema its files name"
        raise EvalInputError(f"--set '{path}': its records are {what}, which no product scores (sets with a "
                             f"scorer: {', '.join(scorers)}) -> give the output folder of tsort, bestanswer, "
                             "licon or chft" + ("" if ref else ", or name the schema with --schema"))
    return scorer


def _base(ref: str) -> str:
    """``tsort_item+scores@1`` -> ``tsort_item@1``: the registered schema a derived one extends."""
    name, _, version = ref.partition("@")
    return f"{name.split('+')[0]}@{version}" if version else ref


def summarize(items: dict[str, dict], scored: dict[str, dict[str, float]],
              scorer: EvalScorer) -> dict[str, float]:
    """Per group, the figures the set's scorer makes of its items' scores (accuracy per parser,
    and what the product adds: micro-F1, CER), and how many items each group has and how many
    were predicted."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    predicted: dict[str, int] = defaultdict(int)
    for rid, s in scored.items():
        group = scorer.group(items[rid])
        predicted[group] += 1
        for name, v in s.items():
            values[group][name].append(v)
    metrics: dict[str, float] = {}
    for group in sorted(values):
        metrics |= scorer.summarize(group, dict(values[group]))
    per_set: dict[str, int] = defaultdict(int)
    for it in items.values():
        per_set[scorer.group(it)] += 1
    metrics |= {f"items:{g}": n for g, n in per_set.items()}
    metrics |= {f"predicted:{g}": predicted[g] for g in per_set}
    return metrics


def eval_score(args) -> int:

    from catalog import Catalog
    from pipelines.driver import new_run_id

    try:
        items = read_set(args.set)
        preds = read_predictions(args.predictions)
        unknown = sorted(set(preds) - set(items))
        if unknown:
            raise EvalInputError(f"{len(unknown)} predictions name no item of the set, e.g. {unknown[:3]}: "
                                 "are they for another set?")
        scorer = set_scorer(args.set, args.schema)
        scored = {rid: scorer.score(items[rid], reply, args.target) for rid, reply in sorted(preds.items())}
    except EvalInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    metrics = summarize(items, scored, scorer)
    catalog = Catalog(args.catalog)
    run_id = new_run_id()
    settings = {"set": os.path.abspath(args.set), "predictions": os.path.abspath(args.predictions),
                "model": args.model}
    catalog.start_run(run_id, pipeline="eval:score", pipeline_file="", runner="eval", workers=1,
                      spec_fingerprint="", seed=0, params=settings, code_version="",
                      output_path=os.path.abspath(args.set))
    try:
        rows = [(rid, f"{scorer.group(items[rid])}:{name}", float(v))
                for rid, s in scored.items() for name, v in s.items()]
        catalog.add_score_rows({"sample_id": [r[0] for r in rows], "metric": [r[1] for r in rows],
                                "value": [r[2] for r in rows]}, job="eval", model=args.model, run_id=run_id,
                               settings=json.dumps(settings, sort_keys=True))
        catalog.record_results(run_id, stage_stats=[], rejects=None, artifacts=[], lineage=[],
                               metrics={"eval": metrics})
    except BaseException as e:
        catalog.finish_run(run_id, "failed", f"{type(e).__name__}: {e}"[:2000])
        raise
    catalog.finish_run(run_id, "succeeded")
    groups = sorted(k.split(":", 1)[1] for k in metrics if k.startswith("items:"))
    width = max(len(g) for g in groups)
    for g in groups:
        line = scorer.describe(g, metrics)
        print(f"{g:<{width}}  {int(metrics[f'predicted:{g}'])}/{int(metrics[f'items:{g}'])} predicted  "
              f"{line or 'no prediction'}")
    print(f"catalog: {catalog.path} (run {run_id}: table scores, job = 'eval'; table metrics, stage = 'eval')")
    return 0


# -- eval import --------------------------------------------------------------------------------------


def eval_import(args) -> int:
    """A published source set (LIConBench's six, a StackExchange Posts.xml) to JSONL records the
    pipelines read: labelled examples (text, and label, split, task in the record) or one post a
    line. Streams; never overwrites a file."""
    from stages.licon.formats import read_labelled

    out = Path(args.output).expanduser()
    if out.exists():
        print(f"error: '{args.output}' exists; give a new file (nothing was written)", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    counts: dict[str, int] = defaultdict(int)
    try:
        rows = read_posts_rows(args.source) if args.format == "stackexchange" else read_labelled(
            args.format, args.source, args.text_field, args.label_field, args.fold)
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
                counts[row.get("split") or row.get("post_type") or "rows"] += 1
    except Exception as e:  # noqa: BLE001 - malformed XML, a CSV's open quote, a missing field: say which
        tmp.unlink(missing_ok=True)  # nothing half-written is left behind
        print(f"error: {args.format} from '{args.source}': {type(e).__name__}: {' '.join(str(e).split())[:300]} "
              "(nothing was written)", file=sys.stderr)
        return 2
    except BaseException:  # Ctrl-C: no .partial file either
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out)
    print(f"{out}: " + ", ".join(f"{n:,} {k}" for k, n in sorted(counts.items())))
    return 0


def read_posts_rows(path: str):
    """A StackExchange dump's Posts.xml, one post a record (questions and answers), streamed."""
    from xml.etree import ElementTree

    from stages.adaleval import core

    p = Path(path).expanduser()
    p = p / "Posts.xml" if p.is_dir() else p
    for _, el in ElementTree.iterparse(str(p), events=("end",)):
        if el.tag != "row":
            continue
        a = el.attrib
        kind = {"1": "question", "2": "answer"}.get(a.get("PostTypeId", ""))
        if kind is not None:
            title = a.get("Title", "")
            body = core.strip_html(a.get("Body", ""))
            yield {"id": f"se/{a['Id']}", "text": f"{title}\n\n{body}".strip() if kind == "question" else body,
                   "post_type": kind, "post_id": a["Id"], "parent_id": a.get("ParentId"),
                   "accepted_answer_id": a.get("AcceptedAnswerId"), "tags": list(core.parse_tags(a.get("Tags"))),
                   "source": "stackexchange"}
        el.clear()


# -- eval predict -------------------------------------------------------------------------------------

def eval_predict(args) -> int:
    """A local model's replies to a built set's prompts, greedy, appended to a JSONL file (id,
    answer); items already in the file are not asked again, so a killed run goes on where it
    stopped. ``--limit`` items per dataset (and order), the set's own order."""
    from gpu_jobs.generate import GenerationError, GenParams, LocalGenerator

    try:
        items = read_set(args.set)
    except EvalInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.output).expanduser()
    try:
        if out.exists() and not out.is_file():
            raise EvalInputError(f"'{out}' is not a file")
        done = set(read_predictions(str(out))) if out.exists() else set()
    except EvalInputError as e:
        print(f"error: --output {out}: {e} -> give a new file, or the JSONL predictions file of an earlier "
              "`eval predict` to go on where it stopped", file=sys.stderr)
        return 2
    try:
        scorer = set_scorer(args.set, args.schema)
    except EvalInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    per_group: dict[str, int] = defaultdict(int)
    chosen = []
    for rid in sorted(items, key=lambda r: (scorer.group(items[r]), r)):
        g = scorer.group(items[rid])
        if args.datasets and not any(g.startswith(d) for d in args.datasets):
            continue
        if args.limit is None or per_group[g] < args.limit:
            per_group[g] += 1
            chosen.append(rid)
    todo = [rid for rid in chosen if rid not in done]
    from gpu_jobs.models import ModelNotAvailable

    try:
        gen = LocalGenerator(args.model)
    except ModelNotAvailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = 0
    with out.open("a", encoding="utf-8") as f:
        for k, rid in enumerate(todo, 1):
            item = items[rid]
            prompt = item.get("prompt") or item.get(f"prompt_{args.target}") or f"{item['context']}\n\n{item['input']}"
            budget = scorer.max_new_tokens(item)
            try:
                reply = gen.generate([{"role": "user", "content": prompt}], GenParams(max_new_tokens=budget))
            except GenerationError as e:
                failed += 1
                print(f"  {rid}: not asked ({e})", file=sys.stderr)
                continue
            f.write(json.dumps({"id": rid, "answer": reply, "model": args.model}, ensure_ascii=False) + "\n")
            f.flush()
            if k % 10 == 0 or k == len(todo):
                print(f"  {k}/{len(todo)} answered", file=sys.stderr)
    print(f"{out}: {len(chosen) - len(todo)} already there, {len(todo) - failed} answered, {failed} too long "
          f"for {args.model}")
    return 0
