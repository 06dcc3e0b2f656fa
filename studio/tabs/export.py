"""Export tab: pick formats and quantisations, export the run (progress streams in), read the
parity report (does each artifact behave like PyTorch, and is the forgetting still there?), download."""
from __future__ import annotations

import threading
from pathlib import Path

import gradio as gr
import pandas as pd

from core.errors import UnlearnError, require

from ..context import Studio, guarded, public_text

GGUF_QUANTS = ["f16", "q8_0", "q4_k_m"]
ONNX_PRECISIONS = ["fp32", "fp16", "int4"]
_export_lock = threading.Lock()   # exports are heavy: one at a time per studio


def parity_frame(manifest: dict) -> pd.DataFrame:
    rows = [{"artifact": name, **{k: v for k, v in scores.items() if not isinstance(v, (list, dict))}}
            for name, scores in manifest.get("metrics", {}).items()]
    return pd.DataFrame(rows, columns=None if rows else ["artifact"]).round(4)


def downloadable(bundle: Path, manifest: dict) -> list[str]:
    """The bundle's reports and model files (weights of the HF folder are left out: use the folder)."""
    names = ["manifest.json"] + [entry["path"] for entry in manifest.get("files", [])]
    keep = [n for n in names if "/" not in n and n.endswith((".json", ".md")) or n.endswith((".gguf", "model.onnx"))]
    return [str(bundle / n) for n in keep if (bundle / n).is_file()]


def create_export_tab(studio: Studio, session, run_key):
    gr.Markdown("Export the unlearned model for llama.cpp (GGUF), onnxruntime (ONNX) and Hugging Face. Every "
                "artifact is run in its own runtime and compared with PyTorch; the report warns if a format "
                "(a low-bit quantisation, say) brings back what was forgotten.")
    with gr.Row():
        formats = gr.CheckboxGroup(["hf", "gguf", "onnx"], value=["hf", "gguf"], label="Formats")
        quants = gr.CheckboxGroup(GGUF_QUANTS, value=["f16", "q8_0"], label="GGUF quantisations")
        precisions = gr.CheckboxGroup(ONNX_PRECISIONS, value=["fp32"], label="ONNX precisions")
    start = gr.Button("Export", variant="primary", elem_id="export")
    progress = gr.Textbox(label="Progress", lines=6, max_lines=6, autoscroll=True)
    warnings = gr.Markdown()
    report = gr.Dataframe(parity_frame({}), interactive=False, label="Parity report", elem_id="parity-table")
    files = gr.File(label="Download", file_count="multiple", interactive=False)

    @guarded
    def on_export(session_id, key, chosen_formats, chosen_quants, chosen_precisions):
        from export.bundle import export_run

        run = studio.workspace.open_run(session_id, key)
        require(run.model_dir.is_dir(), "this run has not finished: there is no model to export yet",
                "let it finish, or resume it")
        require(bool(chosen_formats), "no format is chosen", "tick at least one format")
        if not _export_lock.acquire(blocking=False):
            raise UnlearnError("another export is running", "wait for it to finish")
        lines: list[str] = []
        try:
            target = run.path / "export"
            yield "exporting…", "", None, None
            manifest = export_run(run.path, target, formats=chosen_formats, gguf_quants=chosen_quants or ["f16"],
                                  onnx_precisions=chosen_precisions or ["fp32"], overwrite=True,
                                  log=lines.append)
        finally:
            _export_lock.release()
        notes = "  \n".join(f"⚠️ {w}" for w in manifest.get("warnings", [])) or "✅ no format recovered what was forgotten"
        yield (public_text("\n".join(lines)), public_text(notes), parity_frame(manifest),
               downloadable(target, manifest))

    start.click(on_export, [session, run_key, formats, quants, precisions], [progress, warnings, report, files],
                api_name="export")
