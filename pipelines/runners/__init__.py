"""Runners execute a plan's steps: ``base`` (what every runner shares, and the registry), ``local``
(one machine, a process pool), ``beam`` (Beam's runners: in-process, Dataflow, portable),
``datatrove`` (datatrove's executors)."""
