"""``python -m mfnb COMMAND``: see :mod:`mfnb.cli`."""
import sys

from mfnb.cli import main

sys.exit(main())
