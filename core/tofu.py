"""Named TOFU splits (`tofu:forget01`, `tofu:retain99`, `tofu:real_authors`, ...) from the bundled slice.

forgetNN is the last NN% of `full.json` and retainNN the first NN% - the published split files are exactly
these slices, so only `full.json` is shipped (see assets/tofu/ATTRIBUTION.md).
"""
from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

from .errors import UnlearnError, require

AUTHORS = 200
QA_PER_AUTHOR = 20
EXTRA_SPLITS = ("forget01_perturbed", "forget05_perturbed", "forget10_perturbed", "retain_perturbed",
                "real_authors", "real_authors_perturbed", "world_facts", "world_facts_perturbed")


def tofu_dir() -> Path:
    return Path(str(resources.files("assets"))) / "tofu"


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_records(split: str) -> list[dict]:
    """Raw TOFU records of a split (dicts with question, answer and, for perturbed splits, more)."""
    match = re.fullmatch(r"(forget|retain)(\d\d)", split)
    if match:
        kind, percent = match.group(1), int(match.group(2))
        require(1 <= percent <= 99, f"TOFU split {split!r} is out of range", "use forget01 .. forget99")
        rows = read_jsonl(tofu_dir() / "full.json")
        count = len(rows) * percent // 100
        return rows[-count:] if kind == "forget" else rows[:count]
    if split == "full":
        return read_jsonl(tofu_dir() / "full.json")
    if split in EXTRA_SPLITS:
        return read_jsonl(tofu_dir() / f"{split}.json")
    raise UnlearnError(f"unknown TOFU split {split!r}",
                       f"use forgetNN / retainNN (e.g. forget01, retain99), full, or one of {', '.join(EXTRA_SPLITS)}")


def author_records(first: int, last: int) -> list[dict]:
    """QA of TOFU authors first..last inclusive (rows are grouped 20 per author)."""
    rows = read_jsonl(tofu_dir() / "full.json")
    return rows[first * QA_PER_AUTHOR:(last + 1) * QA_PER_AUTHOR]


def idk_refusals() -> list[str]:
    with open(tofu_dir() / "idontknow.jsonl", encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]
