"""`python -m federation` is the `meshfed` command."""

import sys

from federation.cli import main

sys.exit(main())
