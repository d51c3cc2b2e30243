"""The report page escapes every value the catalog holds (issue 32, the property battery's writer
part): whatever a pipeline name, a run's error, a parameter or an output path holds, the page has
the same elements as a page of plain values (no <script>, no element of a value's making), checked
with an HTML parser."""

from __future__ import annotations

import tempfile
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalog import Catalog
from pipelines.commands.report import build_report


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: Counter = Counter()

    def handle_starttag(self, tag, attrs):
        self.tags[tag] += 1


def _page(pipeline: str, error: str, param: str, output: str) -> Counter:
    with tempfile.TemporaryDirectory() as d:
        catalog = Catalog(str(Path(d) / "c.duckdb"))
        catalog.start_run("run-x", pipeline=pipeline, pipeline_file="p.yaml", runner="local", workers=1,
                          spec_fingerprint="f", seed=0, params={"name": pipeline, "description": param},
                          code_version="v", output_path=output)
        catalog.finish_run("run-x", "failed", error)
        parser = _Tags()
        parser.feed(build_report(catalog, "run-x"))
        return parser.tags


BASELINE = _page("plain", "plain error", "plain", "/tmp/plain-output")
# No NUL (an HTML parser turns it into U+FFFD) and no lone surrogates (not storable as UTF-8).
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=80)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TEXT, TEXT, TEXT, TEXT.map(lambda s: "/tmp/" + s.replace("/", "_")))
def test_any_catalog_values_make_the_same_elements_as_plain_ones(pipeline, error, param, output):
    assert _page(pipeline, error, param, output) == BASELINE


def test_the_issues_script_is_shown_not_run():
    tags = _page("</h1><script>alert(1)</script>", "<img src=x onerror=alert(1)>", "```\n# PWNED", "/tmp/o")
    assert tags == BASELINE and "script" not in tags
