"""``python -m torchopt_edu``: same as the ``torchopt-edu`` command."""

import sys

from torchopt_edu.cli import main

sys.exit(main())
