"""Runs tab: earlier runs in the runs folder; reopen one to see its curves, probe it or export it."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from core.runs import RunDir, read_json

from ..context import Studio, guarded, message


def runs_table(studio: Studio, session_id: str) -> pd.DataFrame:
    rows = []
    for key in studio.workspace.visible_runs(session_id):
        run = RunDir(studio.workspace.root / key)
        config, status = run.config(), run.status()
        after = read_json(run.summary_path, {}).get("after", {})
        rows.append({"run": key, "method": config.get("method"), "model": config.get("model"),
                     "state": status.get("state"), "steps": status.get("step"),
                     "forget NLL after": round(after["forget_nll"], 3) if "forget_nll" in after else None})
    return pd.DataFrame(rows, columns=["run", "method", "model", "state", "steps", "forget NLL after"])


def create_runs_tab(studio: Studio, session, run_key):
    refresh = gr.Button("Refresh", size="sm")
    table = gr.Dataframe(interactive=False, label="Your runs (click one to open it)", elem_id="runs-table")
    with gr.Row():
        code = gr.Textbox(label="Open a run by its key or share code", scale=4, elem_id="run-code")
        open_button = gr.Button("Open", scale=1)
    current = gr.Markdown()

    @guarded
    def on_refresh(session_id):
        return runs_table(studio, session_id)

    @guarded
    def on_open(session_id, key):
        studio.workspace.open_run(session_id, (key or "").strip())
        return key.strip(), message(f"opened **{key.strip()}** — its curves are in Train, probe it in Probe. "
                                    f"Share code: `{key.strip()}`", "ok")

    def on_select(session_id, event: gr.SelectData):
        key = event.row_value[0] if event.row_value else ""
        return on_open(session_id, key)

    refresh.click(on_refresh, session, table, api_name="list_runs")
    open_button.click(on_open, [session, code], [run_key, current], api_name="open_run")
    table.select(on_select, session, [run_key, current], api_name=False)
    return {"table": table, "refresh": on_refresh}
