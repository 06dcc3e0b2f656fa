"""What every evaluation writes into its --out directory, and how it reads one back: summary.json,
summary.md (a Markdown table made by the suite), and the small table helpers the suites share.
Suites import this module; it imports no suite."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UnlearnError, require
from ..runs import write_json_atomic, write_text_atomic

SUMMARY = "summary.json"
TABLE = "summary.md"


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}"
    return str(value)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def interval_text(interval: list) -> str:
    """A 95 % interval as the reports print it: '[0.41, 0.80]', an unbounded end as '?'."""
    low, high = ("?" if bound is None else f"{bound:.2f}" for bound in interval)
    return f"[{low}, {high}]"


def title(summary: dict, suite: str) -> str:
    dtype = f", {summary['dtype']} weights" if summary.get("dtype") else ""   # older summaries lack it
    return f"Evaluation of {summary['model']} ({suite} suite{dtype})"


def prepare_out(out) -> Path:
    """The --out directory, created; refused when a file has that name."""
    out = Path(out)
    require(not out.exists() or out.is_dir(), f"--out {out} is a file", "name a directory for the eval results")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_summary(out: Path, summary: dict, markdown: str) -> None:
    write_json_atomic(Path(out) / SUMMARY, summary)
    write_text_atomic(Path(out) / TABLE, markdown + "\n")


def read_json_file(path: Path, what: str):
    require(path.is_file(), f"{what} {path} does not exist", "check the path")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UnlearnError(f"{what} {path} is not valid JSON: {exc}", "give the file `unlearn eval` wrote") from None
