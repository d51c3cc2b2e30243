"""Values written into a Markdown dataset card, each escaped for the place it lands in.

A card mixes our words with values that come from records and pipeline files (a licence column, a
description, stage parameters, paths). Pasted raw, a newline and ``</table><script>`` in a record's
``license`` break the table and leave live HTML and a heading on the Hub page, and a line of
backticks in a description closes a code block early. Each helper here makes one kind of place safe:
a table cell, inline code, a fenced block, a line of prose, a Python string literal.
"""

from __future__ import annotations

import html
import json
import re

_BACKTICK_RUNS = re.compile(r"`+")


def _longest_backtick_run(text: str) -> int:
    return max((len(m) for m in _BACKTICK_RUNS.findall(text)), default=0)


def cell(value: object) -> str:
    """A table cell: one line, no HTML (``<`` ``>`` ``&`` as entities), ``|`` escaped so the row keeps
    its columns, ``[`` ``]`` escaped so no link or image is made of it."""
    text = " ".join(str(value).split())
    text = html.escape(text, quote=False).replace("\\", "\\\\")
    return re.sub(r"([|\[\]])", r"\\\1", text)


def prose(value: object) -> str:
    """A line of prose: a cell's escaping, and no block syntax at its start (a heading, a quote, a
    list item, a rule)."""
    text = cell(value)
    if re.match(r"\d+[.)]", text):
        return re.sub(r"^(\d+)([.)])", r"\1\\\2", text)
    return "\\" + text if re.match(r"[#>+*=-]", text) else text


def code(value: object) -> str:
    """Inline code that shows ``value`` as it is: the delimiter is one backtick longer than any run
    inside it (CommonMark), on one line. In a table the ``|`` is still escaped (GFM splits cells first)."""
    text = " ".join(str(value).splitlines()).replace("|", "\\|")
    ticks = "`" * (_longest_backtick_run(text) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def fenced(text: str, info: str = "") -> list[str]:
    """A fenced code block whose fence no line of ``text`` can close: longer than any backtick run."""
    fence = "`" * max(3, _longest_backtick_run(text) + 1)
    return [f"{fence}{info}", text.rstrip("\n"), fence]


def python_string(value: str) -> str:
    """A Python string literal of ``value`` (quotes and backslashes escaped)."""
    return json.dumps(value, ensure_ascii=False)
