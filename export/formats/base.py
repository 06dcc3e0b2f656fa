"""What an export format is: one registered module that says its name, what it needs installed, its
variants, why a run cannot become it, how it is written into a bundle, how it is run, and what the model
card says about it. The command line, the bundle, chat and the studio read the registry (FORMATS) and
list no format themselves.

A format module stays light to import (no torch, no runtime at module level): `unlearn --help` and the
studio read every format's name and variants without loading what the format needs to run."""
from __future__ import annotations

import importlib.util
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar

from core.errors import UnlearnError, require

if TYPE_CHECKING:   # export.source opens models through core.models (torch): not at import time
    from ..source import RunSource

# Whether a runtime reproduces the unlearned PyTorch model: identical greedy runs, or a share of tokens.
IDENTICAL = (True, 1.0)


@dataclass(frozen=True)
class Variants:
    """A format's variants, one artifact each (GGUF quantisation types, ONNX precisions)."""
    kind: str                    # in messages: "unknown GGUF quantisation type(s)"
    choices: tuple[str, ...]
    default: tuple[str, ...]     # what `unlearn export` makes when none is given
    keyword: str                 # export_run(..., gguf_quants=...), and the manifest's field
    flag: str                    # unlearn export --gguf-quant
    studio: tuple[str, ...] = ()   # ticked in the studio's export tab

    def check(self, chosen) -> list[str]:
        names = [v.strip().lower() for v in chosen if v.strip()]
        unknown = [v for v in names if v not in self.choices]
        require(not unknown, f"unknown {self.kind}(s): {', '.join(unknown)}", f"choose from {', '.join(self.choices)}")
        require(names, f"no {self.kind} given", f"pass e.g. {self.flag} {','.join(self.default)}")
        return names


@dataclass
class WriteJob:
    """What a format's `write` gets: the run, the bundle being staged (artifact paths are relative to it),
    the unlearned model as a merged Hugging Face folder (what converters read), a log and the timings."""
    source: RunSource
    bundle: Path
    merged_dir: Path
    log: Callable[[str], None] = print
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, key: str):
        """Add the block's wall time to timings[key] (the manifest's timings_s)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[key] = round(self.timings.get(key, 0.0) + time.perf_counter() - started, 2)


class ExportFormat:
    name: ClassVar[str]                      # in --formats and the manifest; its artifacts are NAME or NAME-VARIANT
    title: ClassVar[str] = ""                # in messages: "GGUF export needs ..." (default: the name)
    summary: ClassVar[str]                   # one line for `unlearn export --help` and the studio
    order: ClassVar[int] = 100               # where it is listed and written among the others
    packages: ClassVar[dict[str, str]] = {}  # importable module -> what to pip install for it
    install: ClassVar[str] = ""              # the fix when one is missing
    variants: ClassVar[Variants | None] = None
    in_default: ClassVar[bool] = True        # made by `unlearn export` when --formats is not given
    studio_ticked: ClassVar[bool] = False    # ticked in the studio's export tab
    goals: ClassVar[dict[str, tuple[bool, float]]] = {}   # artifact -> parity goal (identical runs, token agreement)
    cross_checks: ClassVar[tuple[tuple[str, str, str], ...]] = ()  # (artifact, compared with, parity key)
    card_note: ClassVar[str] = ""            # a sentence under the model card's "Running it"

    def available(self) -> str | None:
        """Why this format cannot be made in this environment (a package is missing), or None."""
        missing = [pip for module, pip in self.packages.items() if importlib.util.find_spec(module) is None]
        if not missing:
            return None
        return (f"{self.title or self.name} export needs {' and '.join(missing)}, which "
                f"{'is' if len(missing) == 1 else 'are'} not installed")

    def refusal(self, source: RunSource) -> str | None:
        """Why this run's model cannot become this format (an architecture the converter lacks), or None."""
        return None

    def write(self, job: WriteJob, variants: list[str]) -> dict[str, dict]:
        """Write the artifacts below job.bundle; returns {artifact name: {"path": relative path, ...}}."""
        raise NotImplementedError

    def open_runner(self, name: str, artifact: dict, bundle: Path):
        """The artifact in its real runtime (an export.runtime.Runner), for parity checks and chat."""
        raise NotImplementedError

    def card_lines(self, artifacts: dict[str, dict]) -> list[str]:
        """Commands for the model card's "Running it" block: a chat with each of this format's artifacts."""
        return [chat_command(name) for name in artifacts if self.owns(name)]

    def owns(self, artifact: str) -> bool:
        return artifact == self.name or artifact.startswith(self.name + "-")


def chat_command(artifact: str) -> str:
    fmt, _, variant = artifact.partition("-")
    return f"unlearn chat BUNDLE --format {fmt}" + (f" --variant {variant}" if variant else "")


FORMATS: dict[str, ExportFormat] = {}


def register_format(cls):
    require("-" not in cls.name, f"export format name {cls.name!r} has a '-'",
            "name it without '-': artifacts are named FORMAT-VARIANT")
    FORMATS[cls.name] = cls()
    return cls


def formats() -> list[ExportFormat]:
    """Every registered format, in listing order."""
    return sorted(FORMATS.values(), key=lambda fmt: (fmt.order, fmt.name))


def format_names() -> list[str]:
    return [fmt.name for fmt in formats()]


def get_format(name: str) -> ExportFormat:
    return pick_formats([name])[0]


def pick_formats(names) -> list[ExportFormat]:
    """The formats named (as given, trimmed and lower-cased); one error naming every unknown one."""
    names = [n.strip().lower() for n in names if n.strip()]
    unknown = [n for n in names if n not in FORMATS]
    require(not unknown, f"unknown export format(s): {', '.join(unknown)}", f"choose from {', '.join(format_names())}")
    return [FORMATS[n] for n in names]


def format_of(artifact: str) -> ExportFormat:
    """The format that made an artifact of a bundle (gguf-q8_0 -> gguf)."""
    for fmt in formats():
        if fmt.owns(artifact):
            return fmt
    raise UnlearnError(f"no installed export format makes the artifact {artifact!r}",
                       f"known formats: {', '.join(format_names())}; name the module that adds it in "
                       "UNLEARN_FORMAT_MODULES")
