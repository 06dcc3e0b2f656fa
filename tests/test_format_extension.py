"""Adding an export format is one file: a throw-away "notes" format (a GGUF written by llama.cpp's converter
with a notes file beside it), written here into a temporary folder and named in
UNLEARN_FORMAT_MODULES, is offered by `unlearn export --help` and `unlearn chat --help`, gets its variant flag,
is written by a real `unlearn export` of a tiny run, checked in its runtime in parity.json, listed in
manifest.json and the model card, chatted with, and offered by the studio's export tab, with nothing in the
repository edited."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from conftest import module_env, run_unlearn
from core.errors import UnlearnError

NOTES_FORMAT = '''
from pathlib import Path

from export.formats import IDENTICAL, ExportFormat, Variants, register_format


@register_format
class Notes(ExportFormat):
    name = "notes"
    title = "Notes"
    summary = "a GGUF with a notes file beside it (NOTES.txt)"
    order = 50
    in_default = False
    packages = {"llama_cpp": "llama-cpp-python"}
    variants = Variants("notes weight type", ("f16", "q8_0"), default=("q8_0",), keyword="notes_types",
                        flag="--notes-type", studio=("q8_0",))
    goals = {"notes-f16": IDENTICAL}
    card_note = "Each `notes/TYPE/NOTES.txt` says what its GGUF is: `cat notes/q8_0/NOTES.txt`."

    def write(self, job, variants):
        from transformers import AutoTokenizer

        from export.formats.gguf import convert

        stop = AutoTokenizer.from_pretrained(job.merged_dir).eos_token
        artifacts = {}
        for kind in variants:
            folder = job.bundle / "notes" / kind
            folder.mkdir(parents=True)
            with job.timed(f"notes_{kind}"):
                convert(job.merged_dir, folder / "model.gguf", kind, Path(job.source.base_model))
            (folder / "NOTES.txt").write_text(f'model: ./model.gguf\\nstop: "{stop}"\\n')
            artifacts[f"notes-{kind}"] = {"path": f"notes/{kind}", "notes": f"notes/{kind}/NOTES.txt"}
        return artifacts

    def open_runner(self, name, artifact, bundle):
        from export.formats.gguf import GGUFRunner

        return GGUFRunner(bundle / artifact["path"] / "model.gguf", name=name)   # llama.cpp runs it
'''


@pytest.fixture(scope="module")
def format_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("formats")


@pytest.fixture(scope="module")
def env(format_folder) -> dict:
    return module_env(format_folder, "UNLEARN_FORMAT_MODULES", "notes_format", NOTES_FORMAT)


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, tmp_path_factory):
    from conftest import train_tiny_run

    config = train_tiny_run(tmp_path_factory.mktemp("format-run"), tiny_model_dir, 4, 4, max_steps=2, batch_size=2,
                            lr=1e-2, eval_examples=4)
    return Path(config.out)


@pytest.fixture(scope="module")
def bundle(full_run, env, tmp_path_factory):
    out = tmp_path_factory.mktemp("format-bundle") / "bundle"
    done = run_unlearn("export", full_run, "--formats", "hf,notes", "--notes-type", "f16,q8_0",
                       "--parity-examples", "1", "--out", out, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture
def notes(format_folder, env, monkeypatch):
    """The format imported into this process as UNLEARN_FORMAT_MODULES would, and forgotten after the test."""
    from export.formats import FORMATS

    monkeypatch.syspath_prepend(str(format_folder))
    monkeypatch.setitem(FORMATS, "notes", None)      # the registry gets its entry back out after the test
    yield importlib.import_module("notes_format").Notes
    sys.modules.pop("notes_format", None)


def test_the_new_format_and_its_variant_flag_are_offered_by_the_command_line(env):
    export_help = run_unlearn("export", "--help", env=env).stdout
    assert "notes: a GGUF with a notes file beside it" in " ".join(export_help.split())
    assert "--notes-type NOTES_TYPE" in export_help and "(default: hf,gguf,onnx)" in export_help  # not a default
    assert "{hf,gguf,onnx,notes}" in run_unlearn("chat", "--help", env=env).stdout
    assert "notes" not in run_unlearn("export", "--help").stdout   # without the variable it does not exist


def test_unlearn_export_writes_the_new_format_into_the_bundle_manifest_and_card(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["formats"] == ["hf", "notes"] and manifest["notes_types"] == ["f16", "q8_0"]
    assert set(manifest["artifacts"]) == {"hf", "notes-f16", "notes-q8_0"}
    assert manifest["gguf_quants"] == [] and manifest["onnx_precisions"] == []   # the built-ins' fields stay
    listed = {entry["path"] for entry in manifest["files"]}
    for kind in ("f16", "q8_0"):
        assert {f"notes/{kind}/model.gguf", f"notes/{kind}/NOTES.txt"} <= listed
        notes = (bundle / manifest["artifacts"][f"notes-{kind}"]["notes"]).read_text()
        assert notes.startswith("model: ./model.gguf\n") and 'stop: "<|im_end|>"' in notes
        assert "notes_" + kind in manifest["timings_s"]
    parity = json.loads((bundle / "parity.json").read_text())["formats"]
    assert parity["notes-f16"]["goal"]["met"], parity["notes-f16"]     # llama.cpp f16 = PyTorch
    assert "goal" not in parity["notes-q8_0"] and manifest["metrics"]["notes-q8_0"]["token_agreement"] > 0
    card = (bundle / "README.md").read_text()
    from huggingface_hub import ModelCard

    assert ModelCard(card).data.tags == ["unlearning", "npo_rt", "notes"]   # the Hub's card metadata
    assert "| notes-q8_0 | `notes/q8_0` |" in card
    assert "unlearn chat BUNDLE --format notes --variant f16" in card and "`cat notes/q8_0/NOTES.txt`" in card


def test_the_new_format_chats_and_appears_in_the_studio_in_process(bundle, notes, tokenizer):
    from export.chat import ChatSession, chat_loop
    from studio.tabs import export as export_tab

    session = ChatSession(bundle, "notes", "q8_0")
    lines, pieces = ["/quit", "Who wrote book number 1?"], []
    try:
        assert type(session.runner.llm).__name__ == "Llama"
        chat_loop(session, read=lambda prompt: lines.pop(), write=pieces.append, max_new_tokens=4)
    finally:
        session.close()
    assert pieces[0] == "notes-q8_0> " and pieces[-1] == "\n"
    assert [fmt.name for fmt in export_tab.with_variants()] == ["gguf", "onnx", "notes"]
    assert export_tab.chosen_variants([[], [], []])["notes_types"] == ["q8_0"]


def test_an_unknown_format_is_one_clear_error_everywhere(full_run, bundle, tmp_path):
    from export.bundle import export_run, open_runner
    from export.chat import ChatSession

    with pytest.raises(UnlearnError, match="unknown export format\\(s\\): notes") as error:
        export_run(full_run, tmp_path / "out", formats=("hf", "notes"), log=lambda message: None)
    assert error.value.fix == "choose from hf, gguf, onnx" and not (tmp_path / "out").exists()
    artifact = json.loads((bundle / "manifest.json").read_text())["artifacts"]["notes-q8_0"]
    with pytest.raises(UnlearnError, match="no installed export format makes the artifact 'notes-q8_0'") as error:
        open_runner("notes-q8_0", artifact, bundle)          # before: this fell through to ONNX
    assert "UNLEARN_FORMAT_MODULES" in error.value.fix
    with pytest.raises(UnlearnError, match="unknown export format"):
        ChatSession(bundle, "notes")
