"""The engine: from a validated pipeline to finished files, on any runner.

``plan`` (stages, schemas, steps, fingerprints) over ``steps`` (the plan's types, one step type per
shape); ``shapes/`` (one adapter per shape: what its step is, what the task before writes for it,
how its answer is applied); ``task`` (the one entry point runners call); ``layout`` (the work
folder); ``accounting`` (counters, outcomes, the rule's check); ``checkpoints`` (a model stage's
batches); ``worker_sync`` (tasks on a cluster fetch and push their files); ``harvest`` (what the
markers add up to); ``publish`` (output files, fingerprints); ``card`` (the dataset card);
``artifacts`` (the catalog's rows of a run); ``output_guard`` (what a run may write into, and its
lock); ``interrupts``; ``progress``; ``markdown``.
"""
