"""One adapter per shape of stage (:class:`~pipelines.engine.shapes.base.Shape`): ``record``
(per-record stages, fused into segments), ``decide`` (whole-collection: keys, a decision out of
core), ``global_step`` (a decision over every record's summary), ``group_step`` (partitions of
groups). :func:`shape_of` picks a stage's adapter by its ``shape``; nothing else in the engine does."""

from pipelines.engine.shapes.base import Shape
from pipelines.engine.shapes.decide import CollectionShape
from pipelines.engine.shapes.global_step import GlobalShape
from pipelines.engine.shapes.group_step import GroupShape
from pipelines.engine.shapes.record import RecordShape
from stages.base import Stage

RECORD = RecordShape()
SHAPES: dict[str, Shape] = {s.name: s for s in (RECORD, CollectionShape(), GlobalShape(), GroupShape())}


def shape_of(stage: Stage) -> Shape:
    try:
        return SHAPES[stage.shape]
    except KeyError:
        raise ValueError(f"stage '{stage.name}' has shape '{stage.shape}', which the engine does not know "
                         f"(one of {', '.join(SHAPES)})") from None


__all__ = ["RECORD", "SHAPES", "Shape", "shape_of"]
