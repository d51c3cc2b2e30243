"""The ``longforge`` command: ``main`` (dispatch), ``parser`` (the parser table) and one module per
command family (eval, score, longbench-write, push, report, corpus; ``small_commands`` for the rest).
The only importer of the driver."""
