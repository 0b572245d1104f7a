"""``python -m runner.export``, the export program's name before it moved to ``runner.results``:
kept so that scripts and habits written against it keep working (same program, same flags)."""

import logging
import sys

from runner.results.export import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
