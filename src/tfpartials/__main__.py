"""``python -m tfpartials``: the command line."""

import sys

from tfpartials.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
