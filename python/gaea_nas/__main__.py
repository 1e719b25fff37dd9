"""``python -m gaea_nas`` (and ``torchrun ... -m gaea_nas``) is the ``gaea`` command."""
import sys

from .cli import main

sys.exit(main())
