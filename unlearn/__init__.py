"""The `unlearn` command: one command line composed of each part's own commands (unlearn/cli.py).

The Python API is `core` (`from core import UnlearnConfig, train`); this package only wires the parts
together, so it is the one place that may import all of them."""
