"""The bundled model's one-time conversion (its GGUF to safetensors: about 30 s on a 2-core CPU, longer on a
small Space), started in the background when the studio is created. The page serves at once and its status
line says the conversion is under way; the first event that needs the model (a Data tab preview counts
tokens with its tokenizer) shows a waiting message that updates, instead of blocking silently."""
from __future__ import annotations

import threading
import time
from typing import Callable

from .messages import message

POLL_SECONDS = 1.0


class Preparation:
    """One slow job run once in a daemon thread; the page asks how it stands, a handler waits for it."""

    def __init__(self, prepare: Callable[[], object], what: str, expected: str = ""):
        self.what = what                # "the bundled model"
        self.expected = expected        # "about 30 s", shown while it runs
        self._prepare = prepare
        self._done = threading.Event()
        self._error: Exception | None = None
        self._started = time.monotonic()

    @classmethod
    def finished(cls) -> "Preparation":
        """One with nothing left to do (a Studio made without a warm-up)."""
        done = cls(lambda: None, "the bundled model")
        done._done.set()
        return done

    def start(self) -> "Preparation":
        self._started = time.monotonic()
        threading.Thread(target=self._run, name="studio-warmup", daemon=True).start()
        return self

    def _run(self) -> None:
        try:
            self._prepare()
        except Exception as exc:   # kept: the status line shows it, wait() raises it to the click
            self._error = exc
        finally:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def status(self) -> str:
        """One line for the page: under way (with the seconds so far), failed (why), or ready."""
        if not self.done:
            return message(f"preparing {self.what} ({self._progress()})", "info")
        if self._error is not None:
            return message(f"{self.what} could not be prepared: {self._error}")
        return message(f"{self.what} is ready", "ok")

    def _progress(self) -> str:
        expected = f", {self.expected}" if self.expected else ""
        return f"a one-time conversion{expected}: {int(time.monotonic() - self._started)} s so far…"

    def wait(self) -> None:
        """Block until it has finished; raise its error if it failed."""
        self._done.wait()
        if self._error is not None:
            raise self._error

    def waiting_updates(self, update: Callable[[str], tuple]):
        """For a streaming event handler: yield update(a waiting line) every second while the job runs (nothing
        once it is done); a failed job raises here, so the click says why."""
        while not self.done:
            yield update(message(f"waiting for {self.what}, which is being prepared ({self._progress()})", "info"))
            self._done.wait(POLL_SECONDS)
        self.wait()
