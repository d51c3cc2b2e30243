"""Values written into dataset cards are escaped for where they land (issue 32, points 11 and 12):
checked by parsing the Markdown (markdown-it-py, CommonMark with GFM tables), not by the code's own
strings. Fuzzed with hypothesis; the issue's own licence value as a known case."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from pipelines.commands.hub_push import render_card
from pipelines.engine import markdown

MD = MarkdownIt("commonmark").enable("table")
# CommonMark replaces NUL with U+FFFD when it reads a document: a NUL could not be shown as itself.
TEXT = st.characters(blacklist_characters="\x00")
UNSAFE = {"html_block", "html_inline", "link_open", "image", "heading_open", "blockquote_open", "fence",
          "code_block", "hr", "bullet_list_open", "ordered_list_open"}


def _types(tokens) -> list[str]:
    out = []
    for t in tokens:
        out.append(t.type)
        out += _types(t.children or [])
    return out


def _table_shape(text: str) -> tuple[int, int]:
    tokens = MD.parse(text)
    types = _types(tokens)
    return types.count("th_open"), types.count("tr_open") - 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(TEXT, max_size=60), min_size=1, max_size=4))
def test_any_values_keep_a_table_its_columns_and_make_no_html_link_or_block(values):
    table = "\n".join(["| " + " | ".join(f"h{k}" for k in range(len(values))) + " |",
                       "|" + "---|" * len(values),
                       "| " + " | ".join(markdown.cell(v) for v in values) + " |"])
    assert _table_shape(table) == (len(values), 1)
    assert not UNSAFE & set(_types(MD.parse(table)))


@settings(max_examples=300, deadline=None)
@given(st.text(TEXT, max_size=200))
def test_a_line_of_prose_is_one_paragraph_whatever_it_holds(value):
    types = _types(MD.parse(markdown.prose(value)))
    assert not UNSAFE & set(types)
    assert types.count("paragraph_open") <= 1


@settings(max_examples=300, deadline=None)
@given(st.text(TEXT, max_size=300))
def test_a_fenced_block_holds_its_text_exactly_and_nothing_closes_it_early(value):
    text = "\n".join(value.splitlines())  # the block is line-based: line endings become \n
    tokens = MD.parse("\n".join(["before", *markdown.fenced(text, "yaml"), "after"]))
    fences = [t for t in tokens if t.type == "fence"]
    assert len(fences) == 1
    assert fences[0].content == (text.rstrip("\n") + "\n")
    assert fences[0].info == "yaml"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="\x00|\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"), min_size=1,
               max_size=60).filter(lambda s: s.strip() == s and s))
def test_inline_code_shows_its_value_as_it_is(value):
    tokens = _flatten(MD.parse("x " + markdown.code(value) + " y"))
    code = [t for t in tokens if t.type == "code_inline"]
    assert len(code) == 1 and code[0].content == value


def _flatten(tokens):
    out = []
    for t in tokens:
        out.append(t)
        out += _flatten(t.children or [])
    return out


def test_the_licence_of_the_issue_and_a_fence_breaking_pipeline_stay_inside_their_places():
    licence = "CC-BY-4.0\n</table><script>alert(1)</script>\n# PWNED"
    facts = {"stats": [(0, "read", "record", 10, 10, 0, 0)], "rejects": [],
             "sources": [{"name": "docs.jsonl", "n_records": 10, "license": licence}], "scores": [], "metrics": []}
    configs = [{"config": "default", "n_records": 10, "schema": "document@1", "fingerprint": "ab" * 32,
                "fields": [("id", "string"), ("a`b|c", "string")]}]
    art = {"pipeline": "demo", "run_id": "run-1", "runner": "local", "seed": 0, "code_version": "v"}
    pipeline_yaml = "name: demo\ndescription: |\n  ```\n  # not a heading\n  ```\n"
    card = render_card("lab/demo", art, facts, configs, pipeline_yaml)
    body = card.split("---", 2)[2]
    tokens = MD.parse(body)
    types = _types(tokens)
    assert "html_block" not in types and "html_inline" not in types
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert "PWNED" not in " ".join(headings)
    fences = [t for t in tokens if t.type == "fence"]
    assert any(t.info == "yaml" and t.content == pipeline_yaml.strip() + "\n" for t in fences)
    rendered = MD.render(body)
    assert "<script>" not in rendered and "&lt;script&gt;" in rendered
