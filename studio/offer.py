"""What this installation can run: the export formats and evaluation suites whose packages are installed.
The Export and Evaluate tabs offer only these and name the others with the reason, so a Space that installs
requirements.txt alone (no llama-cpp-python, say) never offers a button that fails after the click."""
from __future__ import annotations

from core.evaluation.suites import SUITES
from export.formats import formats


def format_refusals() -> dict[str, str]:
    """Each registered export format this environment cannot make -> why (a package that is not installed)."""
    return {fmt.name: why for fmt in formats() if (why := fmt.available())}


def suite_refusals() -> dict[str, str]:
    """Each registered evaluation suite this environment cannot run -> why."""
    return {name: why for name, suite in sorted(SUITES.items()) if (why := suite.available())}


def offered_formats() -> list:
    """The export formats this environment can make, in listing order."""
    refused = format_refusals()
    return [fmt for fmt in formats() if fmt.name not in refused]


def offered_suites() -> list[str]:
    """The names of the evaluation suites this environment can run, sorted."""
    refused = suite_refusals()
    return [name for name in sorted(SUITES) if name not in refused]


def not_offered_note(refusals: dict[str, str]) -> str:
    """One Markdown line naming what this installation does not offer and why ('' when it offers everything)."""
    if not refusals:
        return ""
    return "ℹ️ Not offered here — " + "; ".join(f"**{name}**: {why}" for name, why in refusals.items()) + "."
