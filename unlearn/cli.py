"""`unlearn`: every part adds its own subcommands (`add_commands(subparsers)`), and this file puts them
together. Core does not know the other parts; the other parts know core; only this file knows them all."""
from __future__ import annotations

import argparse
import importlib
import sys

from core.cli import run_command

# Each part's command module, in the order `unlearn --help` lists them.
PARTS = ("core.cli", "audit.cli", "export.cli", "studio.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unlearn", description="Make a language model forget chosen data, "
                                     "prove that it forgot, and ship it.")
    commands = parser.add_subparsers(title="commands")
    for part in PARTS:
        importlib.import_module(part).add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
