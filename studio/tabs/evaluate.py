"""Evaluate tab: any evaluation suite of the registry (`core.evaluation.suites`) on a run, the original model
(before unlearning) against the unlearned one, as a table and a bar chart. The suite reads the run's own
data, or what the Data tab holds, for the inputs it declares."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from core.errors import require

from ..context import Studio, guarded, public_text
from ..gpu import call_device, on_gpu
from ..offer import not_offered_note, offered_suites, suite_refusals

DEFAULT_SUITE = "quick"


def suite_choices() -> list[str]:
    """The suites this installation can run (one whose package is missing is named below the list instead)."""
    return offered_suites()


def suite_help(name: str) -> str:
    from core.evaluation.suites import get_suite

    suite = get_suite(name)
    reads = ", ".join(need.name + (" (needed)" if need.required else "") for need in suite.needs) or "nothing more"
    return f"{suite.summary}  \n*reads: {reads} — the run's own, or the Data tab's*"


def figure_table(rows: list[dict]) -> pd.DataFrame:
    """Chart rows as a table: one line per figure, original and unlearned side by side."""
    if not rows:
        return pd.DataFrame(columns=["figure", "original", "unlearned"])
    frame = pd.DataFrame(rows).pivot_table(index="figure", columns="model", values="value", sort=False)
    return frame.reindex(columns=[c for c in ("original", "unlearned") if c in frame.columns]).reset_index().round(3)


def bar_chart(rows: list[dict]):
    """Grouped bars, original vs unlearned per figure (Altair through gr.Plot: the whole chart is sent each
    time, so its colours always match its data)."""
    import altair as alt

    order = ["original", "unlearned"]
    return (alt.Chart(pd.DataFrame(rows)).mark_bar().encode(
        x=alt.X("figure:N", title=None, sort=None, axis=alt.Axis(labelAngle=-30)),
        xOffset=alt.XOffset("model:N", sort=order), y=alt.Y("value:Q", title=None),
        color=alt.Color("model:N", sort=order, title=None),
        tooltip=["figure", "model", alt.Tooltip("value:Q", format=".4f")])
        .properties(title="Original vs unlearned", height=260, width=700))


def create_evaluate_tab(studio: Studio, session, data, run_key):
    gr.Markdown("Evaluate this run: the original model against the unlearned one. Forget answers should "
                "become unlikely and stop appearing in generations; retain scores and fluency should stay.")
    with gr.Row():
        suite = gr.Dropdown(suite_choices(), value=DEFAULT_SUITE, label="Suite", elem_id="evaluate-suite")
        samples = gr.Number(20, label="examples per set", precision=0, minimum=1, maximum=300)
        tokens = gr.Number(48, label="generated tokens per answer", precision=0, minimum=1, maximum=200)
    about = gr.Markdown(suite_help(DEFAULT_SUITE))
    gr.Markdown(not_offered_note(suite_refusals()), elem_id="evaluate-not-offered")
    run = gr.Button("Evaluate this run", variant="primary", elem_id="evaluate")
    table = gr.Dataframe(figure_table([]), interactive=False, label="Original → unlearned", elem_id="evaluate-table")
    chart = gr.Plot(show_label=False, elem_id="evaluate-chart")

    @guarded
    @on_gpu
    def on_evaluate(session_id, key, current_data, name, max_samples, max_new_tokens):
        from core.evaluation.scores import Settings
        from core.models import open_model
        from core.evaluation.suites import EvalContext, get_suite

        chosen = get_suite(name)
        run_dir = studio.workspace.open_run(session_id, key)
        config = run_dir.config()
        inputs = {need.name: config.get(need.name) or (current_data or {}).get(need.name) for need in chosen.needs}
        for need in chosen.needs:
            require(not need.required or bool(inputs[need.name]), f"the {name} suite needs {need.help}",
                    "this run has none: upload it in the Data tab")
        chosen.check_inputs(inputs)   # a missing package or unreadable data fails before any model loads
        device = call_device()   # inside spaces.GPU: the GPU this call was lent
        loaded = open_model(str(run_dir.path), device=device, dtype=studio.dtype)
        original = open_model(loaded.original, device=device, dtype=studio.dtype)
        summary = chosen.run(EvalContext(loaded, run_dir.path / "eval" / name,
                                         Settings(max_samples=int(max_samples), max_new_tokens=int(max_new_tokens)),
                                         inputs, chosen.resolve_options(None), (original.model, original.tokenizer),
                                         public_text(loaded.original)))
        rows = chosen.chart(summary)
        require(bool(rows), f"the {name} suite has nothing to chart for this run", "see summary.md in its eval folder")
        return figure_table(rows), bar_chart(rows)

    suite.change(suite_help, suite, about, api_name=False)
    run.click(on_evaluate, [session, run_key, data, suite, samples, tokens], [table, chart], api_name="evaluate")
    return {"table": table}
