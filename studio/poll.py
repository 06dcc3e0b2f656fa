"""What the page shows about a run, read from its run directory on every timer tick. Reads only files
(no model, no lock), so a poll stays fast while training keeps the CPU busy."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.knowledge import warning
from core.progress import duration
from core.runs import RunDir, RunState, read_json

LOSS_COLUMNS = ("loss",)
NLL_COLUMNS = ("forget_nll", "retain_nll")
LOG_TAIL_BYTES = 4000


def empty_curves() -> pd.DataFrame:
    """A typed long-format frame with no rows: the charts before a run has logged anything."""
    return pd.DataFrame({"step": pd.Series(dtype=int), "value": pd.Series(dtype=float),
                         "series": pd.Series(dtype=str)})


def curves(run: RunDir) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long-format frames for two line plots: the loss terms, and forget vs retain NLL."""
    rows = run.metrics()
    frame = pd.DataFrame(rows)
    if frame.empty:
        return empty_curves(), empty_curves()
    losses = [c for c in frame.columns if c in LOSS_COLUMNS or c.startswith("loss_")]
    nlls = [c for c in NLL_COLUMNS if c in frame.columns]
    return _long(frame, losses), _long(frame, nlls)


def line_chart(frame: pd.DataFrame, title: str):
    """An Altair line chart (one line per series) for gr.Plot. A whole chart is sent on each change, so
    it is always drawn with its data; Gradio's LinePlot kept the colour legend of the data it was built
    with and drew a reopened run's lines invisible."""
    import altair as alt

    color = alt.Color("series:N", legend=alt.Legend(orient="bottom", title=None))
    return (alt.Chart(frame).mark_line().encode(x=alt.X("step:Q"), y=alt.Y("value:Q", title=None), color=color,
                                                tooltip=["step", "series", alt.Tooltip("value:Q", format=".4f")])
            .properties(title=title, height=200, width=500))   # a fixed width: "container" measures 0 in a hidden tab


def _long(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    melted = frame.melt(id_vars=["step"], value_vars=columns, var_name="series", value_name="value")
    return melted.dropna(subset=["value"])


def status_text(run: RunDir) -> str:
    status = run.status()
    state = status.get("state", RunState.QUEUED)
    if state == RunState.INTERRUPTED:
        state = "interrupted: its training process is gone (Resume continues it)"
    parts = [f"**{Path(run.path).name}** — {state}"]
    if status.get("total_steps"):
        parts.append(f"step {status.get('step', 0)} / {status['total_steps']} ({100 * status.get('progress', 0):.0f}%)")
    if status.get("eta_seconds") is not None and status.get("state") == RunState.RUNNING:
        parts.append(f"ETA {duration(status['eta_seconds'])}")
    if status.get("message") and status.get("state") == RunState.RUNNING:
        parts.append(status["message"])
    text = " · ".join(parts)
    if status.get("error"):
        text += f"\n\n⚠️ {status['error']}"
    never_knew = warning(run.config().get("knowledge_check") or {})
    if never_knew:   # said where the run is watched, not only in its log
        text += f"\n\n⚠️ {never_knew[0].upper()}{never_knew[1:]}"
    return text


def log_tail(path: Path) -> str:
    if not path.is_file():
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
        text = handle.read().decode("utf-8", errors="replace")
    # progress bars rewrite one line with carriage returns: keep each line's last state
    lines = [line.rstrip("\r").split("\r")[-1] for line in text.split("\n")]
    return "\n".join(line for line in lines if line.strip())[-LOG_TAIL_BYTES:]


def summary_table(run: RunDir) -> pd.DataFrame | None:
    """Before -> after scores of a finished run, for the Train tab."""
    from core.scoring import describe_scored_on

    before = run.config().get("before") or {}
    summary = read_json(run.summary_path, {})
    after = summary.get("after") or {}
    if not before or not after:
        return None
    basis = describe_scored_on(summary["scored_on"]) if summary.get("scored_on") else ""
    return pd.DataFrame([{"metric": key, "before": round(before[key], 3), "after": round(after[key], 3),
                          "computed on": basis} for key in before if key in after])
