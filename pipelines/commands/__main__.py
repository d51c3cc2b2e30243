"""``python -m cli``: the ``longforge`` command."""

from pipelines.commands.main import main

main()
