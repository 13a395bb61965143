"""``python -m mmlens.cli ...`` (and ``torchrun ... -m mmlens.cli ...``): the ``mmlens`` command."""

import sys

from mmlens.cli import main

sys.exit(main())
