"""`python -m nestdnn.cli`: the `nestdnn` command."""

import sys

from nestdnn.cli import main

sys.exit(main())
