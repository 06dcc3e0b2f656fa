"""Export tab: pick formats and quantisations, export the run (progress streams in), read the
parity report (does each artifact behave like PyTorch, and is the forgetting still there?), download."""
from __future__ import annotations

import threading
from pathlib import Path

import gradio as gr
import pandas as pd

from core.errors import UnlearnError, require
from export.formats import formats

from ..context import Studio, guarded, public_text
from ..offer import format_refusals, not_offered_note, offered_formats

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


def serve_note(bundle: Path, manifest: dict) -> str:
    """How to serve the bundle just written as an OpenAI-compatible API, one command per format."""
    from export.serve import serve_commands

    commands = "\n".join(serve_commands(bundle, manifest))
    return f"\n\nServe it as an OpenAI-compatible chat API (on this machine):\n```bash\n{commands}\n```"


def with_variants() -> list:
    """The formats that have variants, one checkbox group each, in the order the export button passes them."""
    return [fmt for fmt in formats() if fmt.variants]


def chosen_variants(chosen: list[list[str]]) -> dict[str, list[str]]:
    """export_run's variant keywords from the ticked boxes; an empty box takes the format's first ticked default."""
    return {fmt.variants.keyword: list(ticked) or list(fmt.variants.studio or fmt.variants.default)[:1]
            for fmt, ticked in zip(with_variants(), chosen)}


def create_export_tab(studio: Studio, session, run_key):
    gr.Markdown(f"Export the unlearned model as {', '.join(fmt.title or fmt.name for fmt in offered_formats())}. Every "
                "artifact is run in its own runtime and compared with PyTorch; the report warns if a format "
                "(a low-bit quantisation, say) brings back what was forgotten.")
    with gr.Row():
        offered = offered_formats()   # a format whose package is missing is named below, not offered
        picked_formats = gr.CheckboxGroup([fmt.name for fmt in offered],
                                          value=[fmt.name for fmt in offered if fmt.studio_ticked], label="Formats")
        variant_boxes = [gr.CheckboxGroup(list(fmt.variants.default), value=list(fmt.variants.studio),
                                          label=f"{fmt.variants.kind}s", visible=fmt in offered)
                         for fmt in with_variants()]
    gr.Markdown(not_offered_note(format_refusals()), elem_id="export-not-offered")
    start = gr.Button("Export", variant="primary", elem_id="export")
    progress = gr.Textbox(label="Progress", lines=6, max_lines=6, autoscroll=True)
    warnings = gr.Markdown()
    report = gr.Dataframe(parity_frame({}), interactive=False, label="Parity report", elem_id="parity-table")
    files = gr.File(label="Download", file_count="multiple", interactive=False)

    @guarded
    def on_export(session_id, key, chosen_formats, *chosen):
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
            manifest = export_run(run.path, target, formats=chosen_formats, overwrite=True, log=lines.append,
                                  **chosen_variants(chosen))
        finally:
            _export_lock.release()
        notes = "  \n".join(f"⚠️ {w}" for w in manifest.get("warnings", [])) or "✅ no format recovered what was forgotten"
        notes += serve_note(target, manifest)
        yield (public_text("\n".join(lines)), public_text(notes), parity_frame(manifest),
               downloadable(target, manifest))

    start.click(on_export, [session, run_key, picked_formats, *variant_boxes], [progress, warnings, report, files],
                api_name="export")
