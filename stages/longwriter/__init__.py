"""LongWriter data (spec longwriter.md): AgentWrite, minimum-tuning curation, the long-output pool and
LongBench-Write (`stages`, `core`)."""
