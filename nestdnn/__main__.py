"""`python -m nestdnn`: the `nestdnn` command."""

import sys

from nestdnn.cli import main

sys.exit(main())
