"""``python -m promptstate``: the ``promptstate`` command."""

import sys

from promptstate.cli import main

sys.exit(main())
