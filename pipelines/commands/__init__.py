"""The ``longforge`` command: ``main`` (the parser table and dispatch) and one module per command
family (eval, score, longbench-write, push, report, corpus). The only importer of the driver."""
