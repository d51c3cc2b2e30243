"""The Indonesian hack's own figure (spec ../shared/specs/indonesian-stopword-hack.md; issue 33,
points 5 and 21): the paper's claim is about a classifier's accuracy on the shortened texts, not
about how many content words survive. ``hack_classifier`` trains one logistic regression per
(hack, length) on the training split's truncated token ids (a bag of ids) and scores it on the test
split: accuracy and macro-F1 go to the catalog. It observes: the records pass as they are.

Logistic regression over token ids is the classifier OFFLINE.md names as enough to show the
effect; the paper fine-tunes IndoBERT, which is not offline. The figures compare hacks with one
another at one length, never with the paper's numbers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import Field

from schemas import RecordSchema
from stages import register
from stages.base import GlobalContext, GlobalResult, GlobalStage, StageParams
from stages.idhack.stages import HACKED


class ClassifierParams(StageParams):
    train_split: str = Field("train", description="the split the classifier is fitted on")
    test_split: str = Field("test", description="the split it is scored on (never the training one)")
    c: float = Field(100.0, gt=0, description="inverse regularisation strength of the logistic regression [ours: "
                     "100; on quran_tafsir_id (114 labels, ~7 training documents each) C = 1 predicts the largest "
                     "label for nearly every document]")
    max_iter: int = Field(1000, gt=0, le=100_000, description="iterations of lbfgs at most [ours]")


@register
class HackClassifier(GlobalStage):
    """Per (hack, length): a bag-of-token-ids logistic regression fitted on the training split and
    scored on the test split; accuracy, macro-F1 and the counts in the catalog."""

    name = "hack_classifier"
    Params = ClassifierParams
    input_schema = HACKED
    observes = True

    def reads(self) -> tuple[str, ...]:
        return ("label_id", "split", "hack", "max_len", "input_ids")

    def summary_fields(self, upstream: RecordSchema) -> tuple[pa.Field, ...]:
        return (pa.field("label_id", pa.int32()), pa.field("split", pa.string()), pa.field("hack", pa.string()),
                pa.field("max_len", pa.int32()), pa.field("input_ids", pa.list_(pa.int32())))

    def decide(self, summaries: pa.Table, ctx: GlobalContext) -> GlobalResult:
        p: ClassifierParams = self.params
        if p.train_split == p.test_split:
            raise ValueError("hack_classifier: train_split and test_split must differ")
        table = summaries.sort_by([("hack", "ascending"), ("max_len", "ascending"), ("id", "ascending")])
        cols = {n: table.column(n).to_pylist() for n in ("label_id", "split", "hack", "max_len")}
        ids = table.column("input_ids").to_pylist()
        if any(x is None for x in ids):
            raise ValueError("hack_classifier reads the token ids text_hacks writes: set keep_ids: true in "
                             "text_hacks (or leave hack_classifier out)")
        groups: dict[tuple[str, int], list[int]] = {}
        for k, (hack, length) in enumerate(zip(cols["hack"], cols["max_len"], strict=True)):
            groups.setdefault((hack, length), []).append(k)
        metrics: dict[str, float] = {}
        for (hack, length), rows in sorted(groups.items()):
            train = [k for k in rows if cols["split"][k] == p.train_split and cols["label_id"][k] is not None]
            test = [k for k in rows if cols["split"][k] == p.test_split and cols["label_id"][k] is not None]
            key = f"{hack}:{length}"
            metrics[f"train documents:{key}"] = len(train)
            metrics[f"test documents:{key}"] = len(test)
            if not test or len({cols["label_id"][k] for k in train}) < 2 or not any(ids[k] for k in train):
                metrics[f"not scored:{key}"] = 1  # no test split, fewer than two labels, or no token to learn from
                continue
            accuracy, macro_f1 = fit_and_score([ids[k] for k in train], [cols["label_id"][k] for k in train],
                                               [ids[k] for k in test], [cols["label_id"][k] for k in test], p)
            metrics[f"accuracy:{key}"] = accuracy
            metrics[f"macro_f1:{key}"] = macro_f1
        return GlobalResult(columns={}, metrics=metrics)


def bag_of_ids(docs: list[list[int]], width: int):
    """Token-id counts, one sparse row per document (the ids' order is what truncation decided;
    the classifier sees which ids survived and how often)."""
    from scipy.sparse import csr_matrix

    indptr = np.cumsum([0, *(len(d) for d in docs)])
    flat = np.fromiter((t for d in docs for t in d), dtype=np.int64, count=int(indptr[-1]))
    data = np.ones(len(flat), dtype=np.float64)
    m = csr_matrix((data, flat, indptr), shape=(len(docs), width))
    m.sum_duplicates()
    return m


def fit_and_score(train_ids, train_labels, test_ids, test_labels, p: ClassifierParams) -> tuple[float, float]:
    """(accuracy, macro-F1) of a logistic regression over bags of ids. Macro-F1 averages over the
    labels of the test split and the predictions, so a label never predicted counts as 0."""
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    # columns: the ids the training split holds (an id never seen in training carries no weight);
    # a compact width makes each fit several times faster than the tokenizer's whole vocabulary
    column = {t: k for k, t in enumerate(sorted({t for d in train_ids for t in d}))}

    def bags(docs):
        return bag_of_ids([[column[t] for t in d if t in column] for d in docs], len(column))

    tfidf = TfidfTransformer(sublinear_tf=True)
    x_train = tfidf.fit_transform(bags(train_ids))
    x_test = tfidf.transform(bags(test_ids))
    model = LogisticRegression(C=p.c, max_iter=p.max_iter)
    model.fit(x_train, np.asarray(train_labels))
    predicted = model.predict(x_test)
    return (float(accuracy_score(test_labels, predicted)),
            float(f1_score(test_labels, predicted, average="macro", zero_division=0)))
