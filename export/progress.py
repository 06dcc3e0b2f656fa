"""What an export shows while it works: one progress bar over the parity checks (which runtime, prompts done,
the time left), and none of the libraries' deprecation notes and progress bars that a user cannot act on
(transformers' FutureWarnings about its own cache API, its "Writing model shards" bars)."""
from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager


class ParityProgress:
    """One bar over every runtime's prompts (the reference, the original model, each artifact): its label says
    the runtime at work, tqdm gives the rate and the ETA."""

    def __init__(self, total: int, show: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="parity", unit="prompt", disable=not show, file=sys.stderr,
                        dynamic_ncols=True)

    def runtime(self, name: str):
        """Label the bar with `name`; returns the tick to call after each of its prompts."""
        self.bar.set_description(f"parity: {name}")
        return lambda: self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


@contextmanager
def library_noise_off():
    """Deprecation and future warnings off, transformers' logging at errors and its progress bars off, for the
    block; everything put back afterwards (the studio runs exports in its own process)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
            warnings.simplefilter("ignore", category)
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            hf_logging.set_verbosity(level)
            if bars:
                hf_logging.enable_progress_bar()
