"""The engine: from a validated pipeline to finished files, on any runner.

``plan`` (stages, schemas, steps, fingerprints), ``shapes/`` (one adapter per step shape: what it
feeds, how its answer is applied), ``task`` (the one entry point every runner calls for a task),
``layout`` (the work folder), ``accounting`` (counters, the one reconciliation rule), ``checkpoints``
(a model stage's batches), ``harvest`` (what the markers add up to), ``publish`` (output files,
fingerprints), ``card`` (the dataset card), ``progress``.
"""
