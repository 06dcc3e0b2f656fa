"""The subjects of the forget examples, for the relearn attack's group split (Deeb & Roger 2024: relearn some
independent facts, measure others): TOFU's authors (20 consecutive rows of TOFU's data each), or a `group`
field of the user's own .jsonl / .json / .csv records, or, for records copied out of TOFU without one (the
demo's data, a benchmark's extracted split), the author of each row found in TOFU's full.json. None when the
data names no groups."""
from __future__ import annotations

import re
from pathlib import Path

from core.tofu import QA_PER_AUTHOR, load_records, read_jsonl, tofu_dir

GROUP_FIELD = "group"


def forget_groups(source: str, count: int) -> list | None:
    """One group label per forget example (as load_examples read `count` of them), or None."""
    if source.startswith("tofu:"):
        return _tofu_authors(source.removeprefix("tofu:"), count)
    path = Path(source)
    if path.suffix.lower() not in (".jsonl", ".json", ".csv") or not path.is_file():
        return None
    from core.data import _read_csv, _read_json   # the very readers load_examples uses: records align

    text = path.read_text(encoding="utf-8-sig")
    records = (_read_csv if path.suffix.lower() == ".csv" else _read_json)(path, text, "forget")
    if len(records) != count or not all(isinstance(r, dict) for r in records):
        return None
    labels = [r.get(GROUP_FIELD) for r in records]
    if all(label not in (None, "") for label in labels):
        return [str(label) for label in labels]
    return _tofu_rows(records)


def _tofu_rows(records: list[dict]) -> list | None:
    """Each record's TOFU author, when every one is a row of TOFU's full.json (question and answer: one
    question, "What is the full name of the author?", is asked of two authors)."""
    full = tofu_dir() / "full.json"
    if not full.is_file():
        return None
    row_of = {(r["question"], r["answer"]): i for i, r in enumerate(read_jsonl(full))}
    rows = [row_of.get((r.get("question"), r.get("answer"))) for r in records]
    if any(row is None for row in rows):
        return None
    return [f"author {row // QA_PER_AUTHOR}" for row in rows]


def _tofu_authors(split: str, count: int) -> list | None:
    """TOFU rows are 20 per author in full.json; forgetNN is its tail, retainNN its head."""
    match = re.fullmatch(r"(forget|retain)\d\d|full", split)
    if not match:
        return None
    total = len(read_jsonl(tofu_dir() / "full.json"))
    first = total - len(load_records(split)) if split.startswith("forget") else 0
    return [f"author {(first + i) // QA_PER_AUTHOR}" for i in range(count)]


def spread_over_groups(examples: list, groups: list, limit: int) -> tuple[list, list]:
    """Up to `limit` examples taken from every group in turn (each group's first, then each one's second,
    ...), kept in their order: the group split then measures as many subjects as the limit allows."""
    rank, seen = [], {}
    for group in groups:
        rank.append(seen.get(group, 0))
        seen[group] = rank[-1] + 1
    chosen = sorted(sorted(range(len(examples)), key=lambda i: (rank[i], i))[:limit])
    return [examples[i] for i in chosen], [groups[i] for i in chosen]
