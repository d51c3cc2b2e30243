"""Schemas connect by field and type, and writers cast to exactly the declared schema."""

from __future__ import annotations

import pyarrow as pa
import pytest

from schemas import DOCUMENT, TEXT_RECORD, TOKEN_FIELDS, cast_table
from tests.conftest import REPO


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


def test_a_record_schema_is_registered_once():
    from schemas import REGISTRY, RecordSchema

    name = "test_once_only"
    REGISTRY.register(RecordSchema(name, 1, (pa.field("id", pa.string()),)))
    try:
        with pytest.raises(ValueError, match="registered twice"):
            REGISTRY.register(RecordSchema(name, 1, (pa.field("id", pa.string()), pa.field("x", pa.int64()))))
    finally:
        REGISTRY.schemas.pop(f"{name}@1")


def _schema_constants() -> list[tuple[str, object]]:
    """Every RecordSchema held at module level in schemas/ and stages/ (record schemas and stages'
    requirements alike), with where it is."""
    import importlib
    import pkgutil

    import schemas
    import stages
    from schemas import RecordSchema

    found = []
    for pkg in (schemas, stages):
        names = [pkg.__name__] + [m.name for m in pkgutil.walk_packages(pkg.__path__, prefix=pkg.__name__ + ".")]
        for name in names:
            module = importlib.import_module(name)
            found += [(f"{name}.{k}", v) for k, v in vars(module).items() if isinstance(v, RecordSchema)]
    return found


def test_no_name_and_version_means_two_sets_of_fields():
    """document@1 and chat_row@1 were once defined twice with other fields (issue 34)."""
    by_ref: dict[str, set] = {}
    where: dict[str, list[str]] = {}
    for place, schema in _schema_constants():
        by_ref.setdefault(schema.ref, set()).add(tuple((f.name, str(f.type)) for f in schema.fields))
        where.setdefault(schema.ref, []).append(place)
    assert {ref: where[ref] for ref, fields in by_ref.items() if len(fields) > 1} == {}


def test_every_products_record_schemas_are_registered():
    """The schemas products write their records with are in the registry (the catalog and the Hub
    card read fields from it); only stages' input requirements stay out of it."""
    from schemas import REGISTRY
    from stages import all_stages

    requirements = {cls.input_schema.ref for cls in all_stages().values()}
    missing = sorted({f"{place} ({schema.ref})" for place, schema in _schema_constants()
                      if schema.ref not in REGISTRY.schemas and schema.ref not in requirements})
    assert missing == []


@pytest.mark.parametrize("pipeline", sorted(p.name for p in (REPO / "pipelines").glob("*.yaml")))
def test_every_stage_of_every_product_writes_a_registered_schema_or_extends_one(pipeline):
    """A stage writes a registered record schema, or adds fields to the one that reaches it
    (``document+tokens@1``: not a definition of its own, its base is registered and its fields are
    the base's and the stage's)."""
    from pipelines.engine.plan import resolve_stages
    from pipelines.spec import load_pipeline
    from schemas import REGISTRY

    registered = {s.name: s for s in REGISTRY.schemas.values()}
    for ps in resolve_stages(load_pipeline(str(REPO / "pipelines" / pipeline))):
        out = ps.output_schema
        base = registered.get(out.name.split("+")[0])
        assert base is not None, f"{ps.label} writes {out.ref}, whose base is no registered schema"
        if "+" not in out.name:
            assert out.fields == base.fields, f"{ps.label} writes {out.ref} with fields other than the registered"
