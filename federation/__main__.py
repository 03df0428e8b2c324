"""`python -m federation` is the `meshfed` command."""

import sys

from federation.cli.main import main

sys.exit(main())
