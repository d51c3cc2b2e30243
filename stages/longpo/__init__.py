"""LongPO preference pairs (spec longpo.md): chunks, questions, short and long answers, filters
(`stages`, `core`); training rows and reference log-probs (`train`)."""
