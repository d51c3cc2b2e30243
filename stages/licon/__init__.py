"""LIConBench (spec licon.md): selection, items, rounds, orders (`stages`); parsing and scorers
(`core`); the six source formats (`formats`)."""
