"""Stage registry. A stage module registers its classes with :func:`register` on import; the
registry imports every such module under ``stages/`` (one package per product, ``shared`` for the
building blocks every product uses)."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from stages.base import CollectionStage, Dropped, RecordStage, Rejected, Stage, StageParams

STAGES: dict[str, type[Stage]] = {}


def register(cls: type[Stage]) -> type[Stage]:
    if cls.name in STAGES and STAGES[cls.name] is not cls:
        raise ValueError(f"stage name '{cls.name}' registered twice")
    STAGES[cls.name] = cls
    return cls


def all_stages() -> dict[str, type[Stage]]:
    _load_builtin()
    return dict(sorted(STAGES.items()))


def get_stage(name: str) -> type[Stage]:
    _load_builtin()
    return STAGES[name]


_loaded = False


def _load_builtin() -> None:
    """Import every module under ``stages/`` that registers a stage (a line starting ``@register``):
    a product's folder is found by being there, with no list to keep by hand. Modules without
    stages (cores, Beam jobs) are not imported here, so listing stages stays cheap."""
    global _loaded
    if _loaded:
        return
    root = Path(__file__).parent
    for info in pkgutil.walk_packages([str(root)], prefix="stages."):
        if info.ispkg:
            continue
        source = root.joinpath(*info.name.split(".")[1:]).with_suffix(".py")
        if "\n@register" in source.read_text(encoding="utf-8"):
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
]
