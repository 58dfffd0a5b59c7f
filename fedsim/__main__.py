import sys

from fedsim.cli.app import main

sys.exit(main())
