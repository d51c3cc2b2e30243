"""Untie the Knots (spec utk.md): packing, knotting and the parser (`core`), the stage (`stages`)."""
