"""``python -m rnncu``: the same command line as the ``rnncu`` script."""

from __future__ import annotations

import sys

from rnncu.cli import main

if __name__ == "__main__":
    sys.exit(main())
