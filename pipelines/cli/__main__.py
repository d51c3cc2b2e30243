"""``python -m cli``: the ``longforge`` command."""

from pipelines.cli.main import main

main()
