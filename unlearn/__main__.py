"""`python -m unlearn ...`: the same as the `unlearn` command."""
import sys

from .cli import main

sys.exit(main())
