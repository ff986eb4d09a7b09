"""`python -m openseason` (used by torchrun) runs the CLI."""
import sys

from .cli import main

sys.exit(main())
