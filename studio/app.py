"""The Gradio app: one Blocks, one module per tab, all over the same core as the CLI."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import gradio as gr

from core.models import bundled_model_dir, load_tokenizer

from .context import Studio
from .tabs.audit import create_audit_tab
from .tabs.data import SELECTION_QUEUE, create_data_tab
from .tabs.evaluate import create_evaluate_tab
from .tabs.export import create_export_tab
from .tabs.probe import create_probe_tab
from .tabs.runs import create_runs_tab
from .tabs.train import create_train_tab
from .warmup import Preparation
from .workspace import Workspace

TITLE = "Unlearning Studio"
INTRO = ("Make a language model **forget** chosen data while keeping what else it knows. "
         "1) pick the data to forget, 2) train, 3) probe the model before and after.")
CSS = ".gradio-container {max-width: 1280px !important}"


@functools.lru_cache(maxsize=1)
def preview_tokenizer():
    """Token counts in the Data tab use the bundled tokenizer (loaded once: the studio's start-up warm-up)."""
    return load_tokenizer(str(bundled_model_dir()))


def build_app(studio: Studio) -> gr.Blocks:
    with gr.Blocks(title=TITLE) as app:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        warmup_status(studio)
        browser_session = gr.BrowserState(None, storage_key="unlearning-studio-session")
        session = gr.State("")
        data = gr.State({})
        run_key = gr.State("")
        with gr.Tabs():
            with gr.Tab("1 · Data", id="data"):
                create_data_tab(studio, session, data, preview_tokenizer)
            with gr.Tab("2 · Train", id="train") as train_tab:
                train = create_train_tab(studio, session, data, run_key)
            with gr.Tab("3 · Probe", id="probe"):
                create_probe_tab(studio, session, data, run_key)
            with gr.Tab("Evaluate", id="evaluate"):
                create_evaluate_tab(studio, session, data, run_key)
            with gr.Tab("Audit", id="audit"):
                create_audit_tab(studio, session, run_key)
            with gr.Tab("Export", id="export"):
                create_export_tab(studio, session, run_key)
            with gr.Tab("Runs", id="runs"):
                runs = create_runs_tab(studio, session, run_key)

        redraw, inputs, outputs = train["redraw"]
        train_tab.select(redraw, inputs, outputs, api_name=False, show_progress="hidden")
        app.load(*train["memory"], api_name=False, show_progress="hidden")   # the memory estimate of the defaults

        def on_load(stored_session):
            """Restore this browser's session (localStorage) and pick up its latest run, if any."""
            session_id = studio.workspace.session(stored_session)
            own = [k for k in studio.workspace.visible_runs(session_id) if session_id in k]
            return session_id, session_id, own[0] if own else "", runs["refresh"](session_id)

        # The selection's queue: a file dropped while this runs waits for the session instead of being refused.
        app.load(on_load, browser_session, [session, browser_session, run_key, runs["table"]], api_name="session",
                 concurrency_id=SELECTION_QUEUE, concurrency_limit=1)
    return app


def warmup_status(studio: Studio) -> None:
    """A line saying how the bundled model's start-up conversion stands, refreshed every second until it ends."""
    line = gr.Markdown(studio.warmup.status, elem_id="warmup-status")
    ticker = gr.Timer(1, active=not studio.warmup.done)
    ticker.tick(lambda: (studio.warmup.status(), gr.Timer(active=not studio.warmup.done)), None, [line, ticker],
                api_name=False, show_progress="hidden", concurrency_limit=None)


def create_studio(runs_dir: str | Path = "runs", shared: bool | None = None, local_models: list[str] = (),
                  online: bool = False, device: str = "auto", dtype: str = "auto") -> Studio:
    """shared=None: every run in the folder is listed on a desktop, only a session's own on a Space. The bundled
    model's one-time conversion starts here, in the background, so the page serves before it ends."""
    on_space = bool(os.environ.get("SPACE_ID"))
    workspace = Workspace(runs_dir, shared=(not on_space) if shared is None else shared)
    models = {f"local — {Path(p).name}": str(Path(p).resolve()) for p in local_models}
    warmup = Preparation(preview_tokenizer, "the bundled model", expected="about 30 s").start()
    return Studio(workspace=workspace, local_models=models, online=online, device=device, dtype=dtype,
                  warmup=warmup)


def launch(studio: Studio, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           auth: tuple[str, str] | None = None, **kwargs):
    app = build_app(studio)
    app.queue(default_concurrency_limit=4)
    return app.launch(server_name=host, server_port=port, share=share, auth=auth, css=CSS,
                      max_file_size=studio.workspace.upload_limit, theme=gr.themes.Soft(), **kwargs)
