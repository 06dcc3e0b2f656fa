"""Small human-readable tables (Markdown) of an eval summary."""
from __future__ import annotations

from .tofu_metrics import METRICS

TASK_ORDER = ("Forget", "Retain", "Real Authors", "Real World")


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


def tofu_table(summary: dict) -> str:
    figures = summary["figures"]
    rows = [[task] + [figures.get(f"{task} {m}") for m in METRICS]
            + [summary.get("fluency", {}).get(task)] for task in TASK_ORDER]
    text = table(["set", *METRICS, "fluency"], rows)
    totals = [["Model Utility", figures.get("Model Utility")], ["Forget Quality", figures.get("Forget Quality")]]
    if "mia" in summary:
        totals.append(["MIA AUC (min-k%)", summary["mia"]["auc"]])
        totals.append(["PrivLeak %", summary["mia"].get("privacy_leakage")])
    for name, value in summary.get("attacks", {}).items():
        totals.append([f"MIA AUC ({name})", value])
    for name, value in summary.get("attacks_privacy_leakage", {}).items():
        totals.append([f"PrivLeak % ({name})", value])
    return f"{_title(summary, 'TOFU')}\n\n{text}\n\n{table(['figure', 'value'], totals)}"


def quick_table(summary: dict) -> str:
    stages = [s for s in ("before", "after") if s in summary]
    sets = list(summary[stages[-1]])
    keys = ("nll", "prob", "rougeL_recall", "fluency", "repetition", "exact_memorisation", "extraction_strength")
    header = ["metric"] + [f"{name} {stage}" for name in sets for stage in stages]
    rows = [[key] + [summary[stage][name].get(key) for name in sets for stage in stages] for key in keys]
    return f"{_title(summary, 'quick')}\n\n{table(header, rows)}"


def _title(summary: dict, suite: str) -> str:
    dtype = f", {summary['dtype']} weights" if summary.get("dtype") else ""   # older summaries lack it
    return f"Evaluation of {summary['model']} ({suite} suite{dtype})"


def summary_table(summary: dict) -> str:
    """The table of whichever suite wrote the summary."""
    from .suites import get_suite

    return get_suite(summary.get("suite", "quick")).table(summary)
