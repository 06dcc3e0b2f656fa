"""Subcommands of `unlearn` for this part of the product (none yet)."""


def add_commands(commands) -> None:
    """Add this part's subparsers to `unlearn` (called by core.cli.build_parser)."""
