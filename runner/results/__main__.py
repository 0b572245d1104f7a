"""``python -m runner.results``: the same program as ``python -m runner.results.export``."""

import logging
import sys

from runner.results.export import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
