"""Schemas connect by field and type, and writers cast to exactly the declared schema."""

from __future__ import annotations

import pyarrow as pa
import pytest

from schemas import DOCUMENT, TEXT_RECORD, TOKEN_FIELDS, cast_table


def test_missing_from_names_missing_and_mistyped_fields():
    needs = TEXT_RECORD.extended("needs_tokens", 1, TOKEN_FIELDS)
    assert needs.missing_from(DOCUMENT) == ["field 'n_tokens' (int64) is missing"]
    wrong = DOCUMENT.extended("wrong", 1, (pa.field("n_tokens", pa.string()),))
    assert needs.missing_from(wrong) == ["field 'n_tokens' is string, needs int64"]
    assert TEXT_RECORD.missing_from(DOCUMENT) == []


def test_extended_replaces_a_field_of_the_same_name_and_keeps_order():
    s = DOCUMENT.extended("x", 2, (pa.field("language", pa.string()), pa.field("extra", pa.int64())))
    names = [f.name for f in s.fields]
    assert names.count("language") == 1 and names[-1] == "extra" and s.ref == "x@2"
    assert s.arrow.metadata[b"longforge.schema"] == b"x@2"


def test_cast_table_is_exact():
    t = cast_table([{"id": "a", "text": "t"}], DOCUMENT.arrow)
    assert t.schema == DOCUMENT.arrow and t.column("source").to_pylist() == [None]
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        cast_table([{"id": "a", "text": 5}], DOCUMENT.arrow)
