"""Progress on the command line: one bar with the time left over a long step's units of work, and the
silence of --quiet / --json (no bar of ours, transformers', datasets' or the Hub's)."""
from __future__ import annotations

import sys


def duration(seconds: float) -> str:
    """'42s', '3m 07s' or '2h 05m': how long, in the units a person reads at a glance."""
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def silence_bars() -> None:
    """Hide every progress bar of this process from now on (for --quiet and --json: a script reads stdout)."""
    from functools import partialmethod

    from tqdm import std

    std.tqdm.__init__ = partialmethod(std.tqdm.__init__, disable=True)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:   # an older hub: its bars are transformers' then
        pass


class UnitsBar:
    """progress(done, total) as a tqdm bar on stderr (made on the first call: the total is known then);
    say() prints a line above it without breaking it."""

    def __init__(self, description: str, unit: str = "step"):
        self.description, self.unit, self.bar = description, unit, None

    def __call__(self, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.description, unit=self.unit, file=sys.stderr, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def say(self, message: str) -> None:
        from tqdm.auto import tqdm

        if self.bar is None:
            print(message, flush=True)
        else:
            tqdm.write(message, file=sys.stdout)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
