"""Evaluate tab: the quick suite (and TOFU metrics on TOFU data), before vs after, as a table and a chart."""
from __future__ import annotations

import importlib.util

import gradio as gr


def evaluation_available() -> bool:
    return all(importlib.util.find_spec(m) for m in ("core.evaluation.evaluator", "studio.tabs.evaluate_view"))


def create_evaluate_tab(studio, session, data, run_key):
    if not evaluation_available():
        gr.Markdown("ℹ️ **Not available yet.** Evaluation (forget/retain NLL, probability, ROUGE-L, fluency and "
                    "the TOFU metrics) arrives with the evaluation package. Meanwhile the Train tab shows forget "
                    "and retain NLL before → after, and the Probe tab's leak check scores every forget answer.",
                    elem_id="evaluate-unavailable")
        return {}
    from .evaluate_view import create_view  # the real tab, once core.evaluation exists

    return create_view(studio, session, data, run_key)
