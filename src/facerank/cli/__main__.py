"""`python -m facerank.cli ...` runs the `facerank` command."""

import sys

from facerank.cli.app import main

sys.exit(main())
