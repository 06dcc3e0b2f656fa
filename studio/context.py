"""What every tab shares: the workspace, the job manager, the models offered, a cached prober, and
`guarded`, which turns a user's bad input into a message in the page instead of a traceback."""
from __future__ import annotations

import functools
import inspect
import threading
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from core.errors import UnlearnError
from core.runs import RunDir
from core.probe import Prober, load_prober

from .jobs import JobManager
from .messages import message  # noqa: F401  (the tabs import it from here)
from .warmup import Preparation
from .workspace import Workspace

BUILTIN_MODELS = {
    "demo — SmolLM2-135M that learned 4 fictitious TOFU authors": "demo",
    "bundled — SmolLM2-135M-Instruct": "bundled",
}


@dataclass
class Studio:
    workspace: Workspace
    jobs: JobManager = field(default_factory=JobManager)
    local_models: dict[str, str] = field(default_factory=dict)   # label -> directory, given on the command line
    online: bool = False                                           # offer hub ids
    device: str = "auto"
    dtype: str = "auto"                                            # probe and evaluate weights (training: its own)
    warmup: Preparation = field(default_factory=Preparation.finished)   # the bundled model's conversion
    _prober: tuple | None = None
    _prober_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        from importlib import resources

        from core.models import cache_home

        # plain words, no angle brackets: the page renders messages as Markdown/HTML
        _PUBLIC_NAMES[str(self.workspace.root)] = "RUNS"
        _PUBLIC_NAMES[str(Path(str(resources.files("assets"))))] = "assets"
        _PUBLIC_NAMES[str(cache_home())] = "MODEL_CACHE"
        for label, path in self.local_models.items():
            _PUBLIC_NAMES[path] = label.split(" — ")[-1]

    def model_choices(self) -> dict[str, str]:
        return {**BUILTIN_MODELS, **self.local_models}

    def prober(self, run_key: str, session_id: str, device: str = "cpu") -> Prober:
        """One probed run in memory at a time; reloaded when the run has a newer model or checkpoint, or is
        wanted on another device (a ZeroGPU call lends a GPU; the next may not)."""
        run = self.workspace.open_run(session_id, run_key)
        stamp = (_model_stamp(run), device)
        with self._prober_lock:
            if self._prober is None or self._prober[:2] != (run_key, stamp):
                self._prober = None   # free the previous models first
                self._prober = (run_key, stamp, load_prober(run.path, device=device, dtype=self.dtype))
            return self._prober[2]


def _model_stamp(run: RunDir) -> float:
    candidates = [run.model_dir, *run.checkpoints()]
    return max((p.stat().st_mtime for p in candidates if p.exists()), default=0.0)


# Server folders are shown to the browser under these public names (see Studio.public_path).
_PUBLIC_NAMES: dict[str, str] = {}


def public_text(text: str) -> str:
    """The text with server folders replaced by public names: the page never learns server paths."""
    for folder, name in sorted(_PUBLIC_NAMES.items(), key=lambda item: -len(item[0])):
        text = text.replace(folder, name)
    return text


def guarded(handler):
    """Run an event handler; an UnlearnError becomes an error toast and the page keeps working.
    Generator handlers (streamed progress) stay generators, so Gradio still streams them."""
    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def streaming(*args, **kwargs):
            try:
                yield from handler(*args, **kwargs)
            except UnlearnError as exc:
                raise gr.Error(public_text(str(exc)), print_exception=False) from None
        return streaming

    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except UnlearnError as exc:
            raise gr.Error(public_text(str(exc)), print_exception=False) from None
    return wrapper
