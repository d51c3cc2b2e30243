"""LongAlign data (spec longalign.md): self-instruct, packing, batching (`stages`, `core`)."""
