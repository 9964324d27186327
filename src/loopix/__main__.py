"""`python -m loopix` runs the `loopix-client` command line."""

import sys

from loopix.cli import main

if __name__ == "__main__":
    sys.exit(main())
