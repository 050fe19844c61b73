"""``python -m quallm.cli``."""

import sys

from quallm.cli.app import app

sys.exit(app())
