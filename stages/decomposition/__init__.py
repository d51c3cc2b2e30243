"""Dataset Decomposition (spec decomposition.md): buckets, the VSL schedule, concat-and-chunk
(`stages`, `core`) and the PyTorch replay dataset (`vsl_replay`)."""
