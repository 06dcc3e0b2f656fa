"""What a suite declares: the data it needs (each one a CLI flag and a studio input), its options (typed
`Param`s, as the methods'), how it runs, and how its summary is tabulated and charted. Every suite module
(tofu, quick, muse, mcq, or one of yours) subclasses `Suite` and registers it with `register_suite`."""
from __future__ import annotations

import importlib.util
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from ...errors import require
from ...methods.params import Param
from ...runs import write_json_atomic
from ..report import write_summary
from ..scores import Settings

SUITES: dict[str, "Suite"] = {}


@dataclass(frozen=True)
class Need:
    """One input a suite reads: `--NAME PATH`. `from_run`: a run's own setting of that name fills it."""
    name: str
    help: str
    required: bool = False
    from_run: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass
class EvalContext:
    """Everything one evaluation gets: the model, where to write, the limits, its data and options, and the
    original model (before unlearning) when known."""
    loaded: object                      # core.evaluation.loading.LoadedModel
    out: Path
    settings: Settings
    data: dict = field(default_factory=dict)       # need name -> value given (a path or spec), or absent
    options: dict = field(default_factory=dict)    # option name -> value (defaults filled in)
    original: tuple | None = None       # (model, tokenizer)
    original_name: str | None = None
    columns: dict = field(default_factory=dict)    # role -> column map (--forget-columns) for reading its set

    def examples(self, name: str, suite: "Suite") -> list:
        """The examples of data need `name` (forget, retain), read with its column map."""
        from ...data import load_examples

        return load_examples(self.require_data(name, suite), name, self.columns.get(name))

    def require_data(self, name: str, suite: "Suite") -> str:
        need = next(n for n in suite.needs if n.name == name)
        value = self.data.get(name)
        require(bool(value), f"the {suite.name} suite needs {need.help}",
                f"pass {need.flag} FILE" + (", or evaluate a run directory that has one" if need.from_run else ""))
        return value


class Suite:
    name: ClassVar[str]
    summary: ClassVar[str]
    needs: ClassVar[tuple[Need, ...]] = ()
    options: ClassVar[tuple[Param, ...]] = ()
    max_samples: ClassVar[int] = 100          # defaults of --max-samples / --max-new-tokens for this suite
    max_new_tokens: ClassVar[int] = 64
    packages: ClassVar[dict[str, str]] = {}   # importable module -> what to pip install for it, beyond core's

    def available(self) -> str | None:
        """Why this suite cannot run in this environment (a package it imports is missing), or None."""
        missing = [pip for module, pip in self.packages.items() if importlib.util.find_spec(module) is None]
        return f"the {self.name} suite needs {' and '.join(missing)}, which is not installed" if missing else None

    def resolve_options(self, given: dict | None) -> dict:
        given = {k: v for k, v in (given or {}).items() if v is not None}
        declared = {p.name: p for p in self.options}
        unknown = [k for k in given if k not in declared]
        require(not unknown, f"the {self.name} suite has no option {', '.join(unknown)}",
                f"it takes: {', '.join(declared) or 'none'} (see `unlearn suites`)")
        return {name: p.check(given[name], f"the {self.name} suite") if name in given else p.default
                for name, p in declared.items()}

    def check_inputs(self, data: dict) -> None:
        """Fail on missing or unreadable inputs before any model is loaded (default: nothing to check)."""

    def run(self, context: EvalContext) -> dict:
        """Evaluate, write every file into context.out atomically, return the summary (also summary.json)."""
        raise NotImplementedError

    def table(self, summary: dict) -> str:
        """The summary as Markdown."""
        raise NotImplementedError

    def finish(self, context: EvalContext, summary: dict, log: dict, log_name: str, started: float) -> dict:
        """Complete the summary (settings, wall time) and write the log, summary.json and summary.md."""
        summary["settings"] = {**asdict(context.settings), **context.options, "original": context.original_name}
        summary["wall_seconds"] = round(time.time() - started, 1)
        out = Path(context.out)
        write_json_atomic(out / log_name, log)
        write_summary(out, summary, self.table(summary))
        return summary

    def chart(self, summary: dict) -> list[dict]:
        """Rows {"figure", "model", "value"} for a bar chart, original vs unlearned (empty: no chart)."""
        return []


def register_suite(cls: type[Suite]) -> type[Suite]:
    SUITES[cls.name] = cls()
    return cls


def get_suite(name: str) -> Suite:
    require(name in SUITES, f"unknown suite {name!r}", f"choose one of: {', '.join(sorted(SUITES))}")
    return SUITES[name]
