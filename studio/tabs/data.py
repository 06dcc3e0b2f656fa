"""Data tab: upload or paste forget / retain (and optional normal) sets, preview them, or load an example."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import gradio as gr
import pandas as pd

from core.data import load_examples
from core.errors import UnlearnError

from ..context import Studio, guarded, message

ROLES = ("forget", "retain", "normal")
FILE_TYPES = [".txt", ".jsonl", ".json", ".csv"]
PREVIEW_ROWS = 50
SELECTION_QUEUE = "data-selection"


def example_sets() -> dict[str, dict[str, str]]:
    assets = Path(str(resources.files("assets")))
    return {
        "TOFU authors (demo)": {"forget": str(assets / "demo" / "forget.jsonl"),
                                "retain": str(assets / "demo" / "retain.jsonl")},
        "private data (Elara Voss)": {"forget": str(assets / "examples" / "forget.jsonl"),
                                      "retain": str(assets / "examples" / "retain.jsonl")},
    }


PREVIEW_COLUMNS = ["set", "#", "question", "answer / text", "tokens"]


def preview(data: dict, tokenizer) -> tuple[pd.DataFrame, str]:
    """A table of the chosen sets and a one-line count per set (with the validation result)."""
    rows, notes = [], []
    for role in ROLES:
        if role not in data:
            continue
        examples = load_examples(data[role], role)
        lengths = [len(tokenizer((ex.prompt or "") + " " + ex.answer)["input_ids"]) for ex in examples]
        kind = "question/answer" if examples[0].is_qa else "raw text"
        notes.append(f"**{role}**: {len(examples)} {kind} examples, {min(lengths)}–{max(lengths)} tokens")
        for index, (ex, n) in enumerate(zip(examples[:PREVIEW_ROWS], lengths)):
            rows.append({"set": role, "#": index + 1, "question": ex.prompt or "", "answer / text": ex.answer[:300],
                         "tokens": n})
    return pd.DataFrame(rows, columns=PREVIEW_COLUMNS), "  \n".join(notes)


def create_data_tab(studio: Studio, session, data, tokenizer_loader):
    gr.Markdown("Choose what the model must **forget**, and what it must **keep** (retain). "
                "Formats: `.txt` (passages separated by blank lines), `.jsonl` / `.json` / `.csv` with "
                "`question`/`answer`, `prompt`/`completion` or `text` fields.")
    with gr.Row():
        example_buttons = [gr.Button(f"Example: {name}", size="sm") for name in example_sets()]
    uploads, pastes, use_paste = {}, {}, {}
    with gr.Row():
        for role in ("forget", "retain"):
            with gr.Column():
                uploads[role] = gr.File(label=f"{role} set", file_types=FILE_TYPES, type="filepath",
                                        elem_id=f"upload-{role}")
                pastes[role] = gr.Textbox(label=f"…or paste the {role} set", lines=4, elem_id=f"paste-{role}")
                use_paste[role] = gr.Button(f"Use pasted {role} text", size="sm")
    with gr.Accordion("Normal set (optional: the Yao method's normal data; default is the retain set)", open=False):
        uploads["normal"] = gr.File(label="normal set", file_types=FILE_TYPES, type="filepath")
    status = gr.Markdown(elem_id="data-status")
    table = gr.Dataframe(pd.DataFrame(columns=PREVIEW_COLUMNS), label="Preview", interactive=False, wrap=True,
                         max_height=360, elem_id="preview-table")

    def refresh(new_data: dict):
        frame, notes = preview(new_data, tokenizer_loader())
        return new_data, frame, message(notes or "no data yet", "ok" if notes else "info")

    def refreshed(new_data: dict):
        """refresh, after a line that updates while the bundled model (its tokenizer counts the tokens) is still
        being converted at start-up: the first click says what it waits for instead of hanging."""
        yield from studio.warmup.waiting_updates(lambda line: (gr.skip(), gr.skip(), line))
        yield refresh(new_data)

    @guarded
    def on_upload(file, role, session_id, current):
        if not file:
            yield current, gr.skip(), gr.skip()
            return
        path = studio.workspace.save_upload(session_id, role, file, Path(file).name)
        yield from _checked(refreshed, current, role, str(path))

    @guarded
    def on_paste(text, role, session_id, current):
        if not text or not text.strip():
            raise UnlearnError(f"the pasted {role} text is empty", "paste some examples first")
        path = studio.workspace.save_pasted(session_id, role, text)
        yield from _checked(refreshed, current, role, str(path))

    def on_example(files: dict):
        @guarded
        def load_example():
            yield from refreshed(dict(files))
        return load_example

    # Every event that changes the selection reads it and writes it back whole: two running at once (both
    # files dropped at the same instant) would each start from the old selection and one set would be lost.
    # One queue for all of them makes each start from the other's result.
    serial = dict(concurrency_id=SELECTION_QUEUE, concurrency_limit=1)
    for role, upload in uploads.items():
        upload.upload(on_upload, [upload, gr.State(role), session, data], [data, table, status],
                      api_name=f"upload_{role}", **serial)
    for role in ("forget", "retain"):
        use_paste[role].click(on_paste, [pastes[role], gr.State(role), session, data], [data, table, status],
                              api_name=f"paste_{role}", **serial)
    for button, (name, files) in zip(example_buttons, example_sets().items()):
        button.click(on_example(files), None, [data, table, status],
                     api_name="example_" + name.split()[0].lower(), **serial)
    return {"status": status, "table": table}


def _checked(refresh, current: dict, role: str, path: str):
    """Validate the new set before it replaces the old one: a bad file changes nothing."""
    load_examples(path, role)
    return refresh({**current, role: path})
