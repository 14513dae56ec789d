"""`python -m vitkit` (and `torchrun ... -m vitkit train ...`)."""
import sys

from .cli import main

sys.exit(main())
