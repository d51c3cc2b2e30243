"""The Indonesian simple hack (spec idhack.md): vocabulary, removals, truncation (`stages`, `core`) and
its classifier figure (`classifier`)."""
