"""The one-line messages the page shows: an icon for the kind, then the text (rendered as Markdown)."""
from __future__ import annotations

ICONS = {"error": "⚠️", "ok": "✅", "info": "ℹ️"}


def message(text: str, kind: str = "error") -> str:
    return f"{ICONS[kind]} {text}"
