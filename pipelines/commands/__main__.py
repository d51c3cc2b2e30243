"""``python -m pipelines.commands``: the ``longforge`` command."""

import sys

from pipelines.commands.main import main

sys.exit(main())
