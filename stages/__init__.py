"""Stage registry. A stage module registers its classes with :func:`register` on import; the
registry imports every such module under ``stages/`` (one package per product, ``blocks`` for the
building blocks every product uses)."""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys
from pathlib import Path

from schemas import RecordSchema
from stages.base import CollectionStage, Dropped, EvalScorer, RecordStage, Rejected, Stage, StageParams

STAGES: dict[str, type[Stage]] = {}


def register(cls: type[Stage]) -> type[Stage]:
    if cls.name in STAGES and STAGES[cls.name] is not cls:
        raise ValueError(f"stage name '{cls.name}' registered twice")
    STAGES[cls.name] = cls
    return cls


SCORERS: dict[str, EvalScorer] = {}


def register_scorer(schema: RecordSchema):
    """Class decorator: the scorer of evaluation sets whose records have ``schema``."""

    def add(cls: type[EvalScorer]) -> type[EvalScorer]:
        if schema.ref in SCORERS:
            raise ValueError(f"a scorer for {schema.ref} is registered twice")
        SCORERS[schema.ref] = cls()
        return cls

    return add


def all_scorers() -> dict[str, EvalScorer]:
    """Record schema ref -> the scorer of sets of such records."""
    _load_builtin()
    return dict(sorted(SCORERS.items()))


def all_stages() -> dict[str, type[Stage]]:
    _load_builtin()
    return dict(sorted(STAGES.items()))


def get_stage(name: str) -> type[Stage]:
    _load_builtin()
    return STAGES[name]


_loaded = False
# A module that registers a stage or a scorer: a decorator or a call, at any indentation.
_REGISTERS = re.compile(r"^\s*(@\s*)?(stages\.)?register(_scorer)?\b", re.M)


def _load_builtin() -> None:
    """Import every module under ``stages/`` that registers a stage or a scorer (a line that
    starts with ``@register``, ``register(`` or ``@register_scorer``): a product's folder is found
    by being there, with no list to keep by hand. Modules without stages (cores, Beam jobs) are not
    imported here, so listing stages stays cheap."""
    global _loaded
    if _loaded:
        return
    root = Path(__file__).parent

    def broken(name: str) -> None:  # a product package that cannot be imported is an error, never skipped
        raise ImportError(f"stage package {name} cannot be imported") from sys.exc_info()[1]

    for info in pkgutil.walk_packages([str(root)], prefix="stages.", onerror=broken):
        if info.ispkg:
            continue
        source = root.joinpath(*info.name.split(".")[1:]).with_suffix(".py")
        if _REGISTERS.search(source.read_text(encoding="utf-8")):
            importlib.import_module(info.name)
    _loaded = True


__all__ = [
    "CollectionStage",
    "Dropped",
    "RecordStage",
    "Rejected",
    "STAGES",
    "Stage",
    "StageParams",
    "all_stages",
    "get_stage",
    "register",
    "register_scorer",
    "all_scorers",
]
