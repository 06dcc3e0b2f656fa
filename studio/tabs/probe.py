"""Probe tab: one prompt through the original and the unlearned model side by side, an answer's
probability before and after, and a leak check over the whole forget set."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from core.data import load_examples
from core.errors import require
from core.probe import LEAK_ROUGE, ORIGINAL, UNLEARNED

from ..context import Studio, guarded
from ..gpu import call_device, on_gpu

NOTHING = "(no words: the model ended its answer at once)"
LEAK_CHECK_LIMIT = 40   # generations are the slow part: cap the check at 40 forget questions


def create_probe_tab(studio: Studio, session, data, run_key):
    gr.Markdown("Ask the **original** and the **unlearned** model the same question.")
    with gr.Row():
        prompt = gr.Textbox(label="Prompt", scale=4, elem_id="probe-prompt",
                            placeholder="e.g. What is the full name of the author born in Kuwait City on 08/09/1956?")
        sample = gr.Checkbox(False, label="sample (temperature 0.8) instead of greedy", scale=1)
    ask = gr.Button("Ask both models", variant="primary", elem_id="probe-ask")
    with gr.Row():
        original = gr.Textbox(label="Original model", lines=4, elem_id="probe-original")
        unlearned = gr.Textbox(label="Unlearned model", lines=4, elem_id="probe-unlearned")
    with gr.Row():
        answer = gr.Textbox(label="Score this answer to the prompt", scale=4)
        score = gr.Button("Probability before → after", scale=1)
    score_out = gr.Markdown()
    leak = gr.Button(f"Check which forget answers still leak (up to {LEAK_CHECK_LIMIT})")
    leak_summary = gr.Markdown()
    leak_table = gr.Dataframe(interactive=False, wrap=True, max_height=400, visible=False)  # shown once filled

    @guarded
    @on_gpu
    def on_ask(session_id, key, text, sampled):
        prober = studio.prober(key, session_id, call_device())
        return tuple(prober.generate(text, which, sample=sampled).text or NOTHING for which in (ORIGINAL, UNLEARNED))

    @guarded
    @on_gpu
    def on_score(session_id, key, text, candidate):
        prober = studio.prober(key, session_id, call_device())
        before = prober.answer_probability(text, candidate, ORIGINAL)
        after = prober.answer_probability(text, candidate, UNLEARNED)
        return f"per-token probability of that answer: **{before:.3f} → {after:.3f}** (original → unlearned)"

    @guarded
    @on_gpu
    def on_leak(session_id, key, current_data):
        run = studio.workspace.open_run(session_id, key)
        forget = run.config().get("forget") or current_data.get("forget")
        require(bool(forget), "this run has no forget set recorded", "start a run from the Train tab")
        prober = studio.prober(key, session_id, call_device())
        rows = prober.leak_report(load_examples(forget, "forget")[:LEAK_CHECK_LIMIT])
        frame = pd.DataFrame(rows)
        leaks = int(frame["leaks"].sum())
        text = (f"**{leaks} of {len(frame)}** forget answers still leak (ROUGE-L recall ≥ {LEAK_ROUGE} of the "
                f"true answer in the unlearned model's greedy answer); the original leaked "
                f"{int((frame['rouge_before'] >= LEAK_ROUGE).sum())}.")
        return text, gr.update(value=frame.round(3), visible=True)

    ask.click(on_ask, [session, run_key, prompt, sample], [original, unlearned], api_name="probe")
    score.click(on_score, [session, run_key, prompt, answer], score_out, api_name="score_answer")
    leak.click(on_leak, [session, run_key, data], [leak_summary, leak_table], api_name="leak_check")
