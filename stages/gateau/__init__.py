"""GATEAU selection (spec gateau.md): fields and selection (`stages`, `core`), HMG's two models over
one set of tokens (`hmg`)."""
