"""``python -m edge.cli``: the ``ctedge`` command."""

import sys

from edge.cli import main

sys.exit(main())
