"""Stage registry. A stage module registers its classes with :func:`register` on import."""

from __future__ import annotations

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


def _load_builtin() -> None:
    from stages import (  # noqa: F401  (registers on import)
        adaleval,
        bestanswer,
        chft,
        decomposition,
        dedup,
        gateau,
        hmg,
        icp,
        idhack,
        idhack_classifier,
        licon,
        longalign,
        longpo,
        longpo_train,
        longwriter,
        scoring,
        text,
        utk,
    )


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
