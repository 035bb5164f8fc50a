"""``python -m modelpress`` (also what ``torchrun -m modelpress distill`` runs)."""

import sys

from modelpress.cli import main

sys.exit(main())
