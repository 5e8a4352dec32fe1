"""``python -m pvgate``: the `pvgate` command line."""

import sys

from pvgate.cli import main

sys.exit(main())
