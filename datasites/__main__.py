"""`python -m datasites <command>`: the operator's command line (`datasites.cli.main`)."""

import sys

from datasites.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
