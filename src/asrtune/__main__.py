"""``python -m asrtune`` (what ``torchrun --nproc_per_node N -m asrtune train ...`` runs)."""

import sys

from asrtune.cli import main

sys.exit(main())
