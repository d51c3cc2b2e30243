"""Building blocks every product uses: text stages, dedup, scoring, generation, Beam pipelines,
plots, LongBench's eval view. Products import these, never each other."""
