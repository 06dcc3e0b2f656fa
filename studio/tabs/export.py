"""Export tab: formats and quantisations to emit, progress, the parity report, download links."""
from __future__ import annotations

import importlib.util

import gradio as gr


def export_available() -> bool:
    return all(importlib.util.find_spec(m) for m in ("export.bundle", "studio.tabs.export_view"))


def create_export_tab(studio, session, run_key):
    if not export_available():
        gr.Markdown("ℹ️ **Not available yet.** Export to Hugging Face safetensors, GGUF (llama.cpp) and ONNX, "
                    "with a parity report, arrives with the export package. Meanwhile a finished run's "
                    "`model/` folder is a standard Hugging Face model (or PEFT adapter).",
                    elem_id="export-unavailable")
        return {}
    from .export_view import create_view

    return create_view(studio, session, run_key)
