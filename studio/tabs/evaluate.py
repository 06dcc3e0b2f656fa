"""Evaluate tab: the quick suite (NLL, probability, ROUGE-L recall, fluency) on the run's
forget and retain sets, before (the original model) vs after, as a table and a bar chart."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from core.data import load_examples
from core.errors import require

from ..context import Studio, guarded, public_text
from ..gpu import call_device, on_gpu

METRICS = ("nll", "prob", "rougeL_recall", "fluency")
HELP = {"nll": "answer NLL (forget: higher = forgotten)", "prob": "answer probability",
        "rougeL_recall": "ROUGE-L recall of greedy answers", "fluency": "fluency (gibberish scores low)"}


def quick_table(summary: dict) -> pd.DataFrame:
    rows = []
    for name in ("forget", "retain"):
        for metric in METRICS:
            before = summary.get("before", {}).get(name, {}).get(metric)
            after = summary.get("after", {}).get(name, {}).get(metric)
            if after is not None:
                rows.append({"set": name, "metric": HELP[metric], "before": before, "after": after})
    return pd.DataFrame(rows).round(3)


SHORT_NAMES = {"ROUGE-L recall of greedy answers": "ROUGE-L"}   # bar labels; the table keeps the full names


def chart_frame(table: pd.DataFrame) -> pd.DataFrame:
    long = table.melt(id_vars=["set", "metric"], value_vars=["before", "after"], var_name="model")
    short = long["metric"].str.split(" (", regex=False).str[0].replace(SHORT_NAMES)
    long["bar"] = long["set"] + " · " + short
    return long.dropna(subset=["value"])


def bar_chart(long: pd.DataFrame):
    """Grouped bars, before vs after per figure (Altair through gr.Plot: the whole chart is sent each time,
    so its colours always match its data)."""
    import altair as alt

    return (alt.Chart(long).mark_bar().encode(
        x=alt.X("bar:N", title=None, axis=alt.Axis(labelAngle=-30)), xOffset=alt.XOffset("model:N", sort=["before", "after"]),
        y=alt.Y("value:Q", title=None), color=alt.Color("model:N", sort=["before", "after"], title=None),
        tooltip=["bar", "model", alt.Tooltip("value:Q", format=".4f")])
        .properties(title="Before vs after", height=260, width=700))


def create_evaluate_tab(studio: Studio, session, data, run_key):
    gr.Markdown("The quick suite on this run's data: the original model (**before**) vs the unlearned one "
                "(**after**). Forget answers should become unlikely and stop appearing in generations; retain "
                "scores and fluency should stay.")
    with gr.Row():
        samples = gr.Number(20, label="examples per set", precision=0, minimum=1, maximum=300)
        tokens = gr.Number(48, label="generated tokens per answer", precision=0, minimum=1, maximum=200)
    run = gr.Button("Evaluate this run", variant="primary", elem_id="evaluate")
    table = gr.Dataframe(interactive=False, label="Before → after", elem_id="evaluate-table")
    chart = gr.Plot(show_label=False, elem_id="evaluate-chart")

    @guarded
    @on_gpu
    def on_evaluate(session_id, key, max_samples, max_new_tokens):
        from core.evaluation.evaluator import Settings, run_quick
        from core.evaluation.loading import open_model

        run_dir = studio.workspace.open_run(session_id, key)
        config = run_dir.config()
        require(bool(config.get("forget")), "this run has no forget set recorded", "start a run from the Train tab")
        device = call_device()   # inside spaces.GPU: the GPU this call was lent
        loaded = open_model(str(run_dir.path), device=device, dtype=studio.dtype)
        original = open_model(loaded.original, device=device, dtype=studio.dtype)
        summary = run_quick(loaded, run_dir.path / "eval" / "quick", load_examples(config["forget"], "forget"),
                            load_examples(config["retain"], "retain") if config.get("retain") else None,
                            Settings(max_samples=int(max_samples), max_new_tokens=int(max_new_tokens)),
                            original=(original.model, original.tokenizer), original_name=public_text(loaded.original))
        frame = quick_table(summary)
        return frame, bar_chart(chart_frame(frame))

    run.click(on_evaluate, [session, run_key, samples, tokens], [table, chart], api_name="evaluate")
    return {"table": table}
