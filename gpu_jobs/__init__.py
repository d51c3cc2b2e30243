"""Model-based jobs (scoring, embeddings) and the offline model resolution they share."""
