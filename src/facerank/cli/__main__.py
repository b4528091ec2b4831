"""`python -m facerank.cli ...` runs the `facerank` command."""

import sys

from facerank.cli.app import main

if __name__ == "__main__":  # enrolment's worker processes import this module again
    sys.exit(main())
