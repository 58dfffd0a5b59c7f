"""`python -m fedsim`: the same command line as the `fedsim` script."""

import sys

from fedsim.cli.app import main

sys.exit(main())
