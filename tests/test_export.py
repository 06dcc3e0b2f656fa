"""Export end to end: real runs exported to HF / GGUF / ONNX, each artifact loaded in its real runtime
(transformers, llama_cpp.Llama, onnxruntime) and compared with the PyTorch model; the GGUF forget patch
against the merged model; atomic bundles; clear errors for bad input; chat over every format.

The tiny model here is 64 wide with 32-wide heads (conftest's 32-wide model has 8-wide heads, which
onnxruntime's GroupQueryAttention refuses: that case is tested as an error)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import merged_reference, run_unlearn, sentencepiece_model_dir, write_qa_files
from core.config import UnlearnConfig
from core.errors import UnlearnError
from core.trainer import train
from export.bundle import export_run, open_runner, read_manifest, refusals
from export.formats import IDENTICAL, get_format
from export.formats import gguf as gguf_module
from export.parity import Probe, forgetting_check, goal_status, run_probes, summarise
from export.source import read_run
from export.runtime import Runner

ALL_QUANTS = ("f16", "q8_0", "q4_k_m")
N_TOKENS = 32


def quiet(message: str) -> None:
    pass


def unlearn(*args, timeout=600):
    return run_unlearn(*args, timeout=timeout)


# ---------------------------------------------------------------- fixtures: tiny model, runs, one bundle

@pytest.fixture(scope="module")
def tiny64_dir(tmp_path_factory, tokenizer) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    path = tmp_path_factory.mktemp("tiny64")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data_files(tmp_path_factory) -> dict:
    return write_qa_files(tmp_path_factory.mktemp("export-data"), 4, 4)


def make_run(model_dir, data_files, out, lora: bool, steps: int = 2) -> Path:
    config = UnlearnConfig(model=str(model_dir), method="npo_rt", forget=str(data_files["forget"]),
                           retain=str(data_files["retain"]), out=str(out), max_steps=steps, batch_size=2,
                           lr=1e-2, device="cpu", lora=lora, lora_r=4, save_steps=0, eval_examples=4)
    train(config, show_progress=False, log=quiet)
    return Path(out)


@pytest.fixture(scope="module")
def lora_run(tiny64_dir, data_files, tmp_path_factory) -> Path:
    return make_run(tiny64_dir, data_files, tmp_path_factory.mktemp("runs") / "lora", lora=True)


@pytest.fixture(scope="module")
def lora_bundle(lora_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "lora"
    export_run(lora_run, out, formats=("hf", "gguf", "onnx"), gguf_quants=ALL_QUANTS,
               onnx_precisions=("fp32", "fp16", "int4"), parity_examples=2, log=quiet)
    return out


def chat_prompts(tokenizer) -> list[list[int]]:
    questions = ["Who wrote book number 1?", "What is 3 plus 3?"]
    return [list(tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                               tokenize=True)["input_ids"]) for q in questions]


# ---------------------------------------------------------------- the bundle

def test_every_file_of_the_bundle_is_readable_by_others_as_the_umask_allows(lora_bundle):
    """safetensors 0.8 writes 0600 and the bundle is staged in a 0700 folder: a web server or a teammate
    serving the bundle could not read the merged model."""
    mask = os.umask(0o022)
    os.umask(mask)
    modes = {p.relative_to(lora_bundle).as_posix(): p.stat().st_mode & 0o777 for p in lora_bundle.rglob("*")}
    assert any(name.endswith(".safetensors") for name in modes)
    unreadable = {name: oct(mode) for name, mode in modes.items() if mode & 0o444 != 0o444 & ~mask}
    assert not unreadable


def test_bundle_has_every_artifact_with_true_sizes_and_hashes(lora_bundle):
    import hashlib

    manifest = read_manifest(lora_bundle)
    assert set(manifest["artifacts"]) == {"hf", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m", "gguf-lora",
                                          "onnx-fp32", "onnx-fp16", "onnx-int4"}
    assert manifest["source_run"]["method"] == "npo_rt" and manifest["source_run"]["lora"] is True
    listed = {f["path"]: f for f in manifest["files"]}
    on_disk = {str(p.relative_to(lora_bundle)) for p in lora_bundle.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(listed) == on_disk
    for path, entry in listed.items():
        data = (lora_bundle / path).read_bytes()
        assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert (lora_bundle / "hf" / "model.safetensors").is_file() and (lora_bundle / "hf" / "generation_config.json").is_file()
    assert "im_start" in (lora_bundle / "hf" / "chat_template.jinja").read_text()
    assert (lora_bundle / "adapter" / "adapter_model.safetensors").is_file()
    assert not [p for p in lora_bundle.rglob("*") if p.suffix in (".bin", ".pt", ".pkl")]  # no pickles
    assert not [p for p in lora_bundle.parent.iterdir() if ".partial-" in p.name]


def test_model_card_and_parity_report(lora_bundle):
    card = (lora_bundle / "README.md").read_text()
    assert card.startswith("---\n") and "npo_rt" in card and "forget.jsonl" in card
    report = json.loads((lora_bundle / "parity.json").read_text())
    assert report["probes"] == {"forget": 2, "retain": 2, "greedy_tokens": N_TOKENS}
    for name in ("gguf-f16", "onnx-fp32"):
        assert report["formats"][name]["goal"]["met"], (name, report["formats"][name])
    # A random tiny model's logits are nearly flat, so q8_0 rounding may flip a near-tie: its goal is
    # checked on the bundled model; here, that the verdict follows the numbers.
    q8 = report["formats"]["gguf-q8_0"]
    assert q8["goal"]["met"] == (q8["token_agreement"] >= 0.9)
    for scores in report["formats"].values():
        assert {"forget_nll", "retain_nll", "forget_rougeL", "first_logits_max_abs_diff"} <= set(scores)
    q4 = read_manifest(lora_bundle)["artifacts"]["gguf-q4_k_m"]
    assert q4["fallback_tensors"] > 0 and "not a multiple of 256" in q4["fallback_note"]  # 64-wide rows


@pytest.mark.parametrize("name", ["hf", "gguf-f16", "onnx-fp32", "onnx-fp16"])
def test_artifact_in_its_runtime_matches_pytorch_greedy(lora_bundle, lora_run, tokenizer, name):
    reference = merged_reference(lora_run)
    runner = open_runner(name, read_manifest(lora_bundle)["artifacts"][name], lora_bundle)
    runtime = {"hf": "LlamaForCausalLM", "gguf-f16": "Llama", "onnx-fp32": "InferenceSession",
               "onnx-fp16": "InferenceSession"}[name]
    handle = getattr(runner, "model", None) or getattr(runner, "llm", None) or getattr(runner, "session", None)
    assert type(handle).__name__ == runtime
    try:
        for prompt in chat_prompts(tokenizer):
            assert runner.greedy(prompt, N_TOKENS) == reference.greedy(prompt, N_TOKENS)
            tolerance = 1e-2 if name == "onnx-fp16" else 1e-3
            assert np.abs(runner.prefill(prompt)[-1] - reference.prefill(prompt)[-1]).max() < tolerance
    finally:
        runner.close()


def test_gguf_forget_patch_on_the_base_equals_the_merged_model(lora_bundle, tokenizer):
    from export.formats.gguf import GGUFRunner

    gguf_dir = lora_bundle / "gguf"
    patched = GGUFRunner(gguf_dir / "base-f16.gguf", lora_path=gguf_dir / "forget-patch-f16.gguf")
    merged = GGUFRunner(gguf_dir / "model-f16.gguf")
    base = GGUFRunner(gguf_dir / "base-f16.gguf")
    try:
        for prompt in chat_prompts(tokenizer):
            assert patched.greedy(prompt, N_TOKENS) == merged.greedy(prompt, N_TOKENS)
            patch_gap = np.abs(patched.prefill(prompt) - merged.prefill(prompt)).max()
            base_gap = np.abs(base.prefill(prompt) - merged.prefill(prompt)).max()
            assert patch_gap < 0.02 and base_gap > 20 * patch_gap  # the patch is what makes the difference
    finally:
        for runner in (patched, merged, base):
            runner.close()
    assert (gguf_dir / "forget-patch-f16.gguf").stat().st_size < (gguf_dir / "base-f16.gguf").stat().st_size / 5


def modelfile_fields(text: str) -> dict:
    """FROM / ADAPTER / TEMPLATE / PARAMETER lines of a Modelfile as Ollama reads them (""" + '"""' + """ blocks)."""
    import re

    fields = {"PARAMETER": []}
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M)
    fields["TEMPLATE"] = template.group(1) if template else None
    for line in re.sub(r'^TEMPLATE """.*?"""$', "", text, flags=re.S | re.M).splitlines():
        key, _, value = line.partition(" ")
        if key == "PARAMETER":
            fields["PARAMETER"].append(value)
        elif key in ("FROM", "ADAPTER"):
            fields[key] = value
    return fields


def test_each_gguf_has_an_ollama_modelfile_that_prompts_as_the_tokenizer_does(lora_bundle, tokenizer):
    from export.modelfile import gguf_adds_bos, ollama_prompt

    artifacts = read_manifest(lora_bundle)["artifacts"]
    gguf_names = [name for name in artifacts if name.startswith("gguf-")]
    assert {artifacts[name]["modelfile"] for name in gguf_names} == {
        "gguf/model-f16.Modelfile", "gguf/model-q8_0.Modelfile", "gguf/model-q4_k_m.Modelfile",
        "gguf/forget-patch-f16.Modelfile"}
    for name in gguf_names:
        modelfile = lora_bundle / artifacts[name]["modelfile"]
        fields = modelfile_fields(modelfile.read_text())
        weights = modelfile.parent / fields["FROM"]     # Ollama reads FROM relative to the Modelfile
        assert weights.is_file() and weights.suffix == ".gguf"
        if name == "gguf-lora":
            assert weights.name == "base-f16.gguf" and (modelfile.parent / fields["ADAPTER"]).name == "forget-patch-f16.gguf"
        else:
            assert weights == lora_bundle / artifacts[name]["path"] and "ADAPTER" not in fields
        assert 'stop "<|im_end|>"' in fields["PARAMETER"] and "num_ctx 1024" in fields["PARAMETER"]
        bos = tokenizer.bos_token if gguf_adds_bos(weights) else ""
        for messages in ([("user", "Who wrote book number 1?")],
                         [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."), ("user", "2+2?")]):
            expected = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in messages],
                                                     tokenize=False, add_generation_prompt=True)
            assert ollama_prompt(fields["TEMPLATE"], bos, messages) == expected
    card = (lora_bundle / "README.md").read_text()
    assert "ollama create unlearned-q8_0 -f gguf/model-q8_0.Modelfile" in card
    assert "ollama create unlearned-lora -f gguf/forget-patch-f16.Modelfile" in card


@pytest.mark.parametrize("fmt", ["gguf", "onnx", "hf"])
def test_chat_streams_the_greedy_answer_of_each_format(lora_bundle, lora_run, tokenizer, fmt):
    from export.chat import ChatSession, chat_loop

    session = ChatSession(lora_bundle, fmt)
    lines, pieces = ["/quit", "Who wrote book number 1?"], []
    try:
        chat_loop(session, read=lambda prompt: lines.pop(), write=pieces.append, max_new_tokens=12)
    finally:
        session.close()
    prompt = chat_prompts(tokenizer)[0]
    expected = merged_reference(lora_run).greedy(prompt, 12)
    if tokenizer.eos_token_id in expected:
        expected = expected[:expected.index(tokenizer.eos_token_id)]
    streamed = "".join(pieces[1:-1])  # between the "<artifact>> " label and the final newline
    assert pieces[0].startswith(fmt) and pieces[-1] == "\n" and expected
    assert streamed == tokenizer.decode(expected, skip_special_tokens=True)


# ---------------------------------------------------------------- forgetting survives export

def test_a_format_that_recovers_forgotten_answers_is_flagged():
    original = {"forget_nll": 1.0, "forget_rougeL": 0.9}
    unlearned = {"forget_nll": 5.0, "forget_rougeL": 0.1}
    formats = {"kept": {"forget_nll": 4.9, "forget_rougeL": 0.12},
               "recovered": {"forget_nll": 2.0, "forget_rougeL": 0.6}}
    checks, warnings = forgetting_check(formats, unlearned, original)
    assert checks["kept"]["recovers_forgotten"] is False and checks["recovered"]["recovers_forgotten"] is True
    assert checks["recovered"]["nll_recovery"] == pytest.approx(0.75)
    assert len(warnings) == 1 and warnings[0].startswith("recovered recovers forgotten knowledge")


def test_a_format_that_damages_the_retained_answers_is_flagged_and_a_second_quantisation_named():
    from export.parity import retain_damage_check

    unlearned = {"retain_nll": 0.425}
    # seen exporting a 3-step QLoRA run of the demo model: q8_0 kept it, q4_0 did not
    formats = {"gguf-q8_0": {"retain_nll": 0.450}, "gguf-q4_0": {"retain_nll": 4.981}, "edge": {"retain_nll": 0.924},
               "hf": {"retain_nll": 0.425}}
    warnings = retain_damage_check(formats, unlearned, None)
    assert [w.split()[0] for w in warnings] == ["gguf-q4_0"]   # +0.499 nats is under the 0.5 threshold
    assert "retain NLL 4.981 vs 0.425 unlearned (+4.56 nats)" in warnings[0] and "second time" not in warnings[0]
    twice = retain_damage_check(formats, unlearned, "4-bit nf4")
    assert "already held in 4-bit nf4 while the adapter trained, so this format quantises it a second time" in twice[0]
    assert retain_damage_check({"gguf-q4_0": {"forget_nll": 3.0}}, unlearned, None) == []   # nothing retained measured


class ScriptedRunner(Runner):
    """Next token = a table lookup on the last token (vocabulary 8), so every agreement is hand-computable."""

    def __init__(self, table: dict[int, int], runner_up: dict[int, tuple[int, float]] | None = None):
        self.table, self.runner_up, self.last = table, runner_up or {}, None

    def _logits(self, token: int) -> np.ndarray:
        logits = np.zeros(8, dtype=np.float32)
        if token in self.runner_up:   # a second candidate, this many logits below the first
            second, below = self.runner_up[token]
            logits[second] = 1.0 - below
        logits[self.table.get(token, 0)] = 1.0
        return logits

    def prefill(self, ids):
        self.last = ids[-1]
        return np.stack([self._logits(t) for t in ids])

    def step(self, token):
        return self._logits(token)


def test_token_agreement_is_teacher_forced_and_the_greedy_prefix_is_reported_beside_it():
    probes = [Probe("forget", [1, 2, 3], answer_start=1, answer_text="x")]
    reference_runner = ScriptedRunner({1: 2, 2: 3, 3: 4, 4: 5, 5: 6, 6: 7, 7: 1})  # 1 -> 2 -> 3 -> 4 ...
    # differs only after token 1: its own greedy run leaves the reference's at once, yet on the
    # reference's context it picks the same next token 3 times out of 4
    near_tie = ScriptedRunner({1: 5, 2: 3, 3: 4, 4: 5, 5: 6, 6: 7, 7: 1})
    reference = run_probes(reference_runner, probes, n_tokens=4)
    assert reference["tokens"] == [[2, 3, 4, 5]]
    raw = run_probes(near_tie, probes, n_tokens=4, forced=reference["tokens"])
    assert raw["tokens"] == [[5, 6, 7, 1]] and raw["forced_argmax"] == [[5, 3, 4, 5]]
    words = SimpleNamespace(eos_token_id=0, decode=lambda ids, skip_special_tokens: " ".join(map(str, ids)))
    scores = summarise(raw, reference, probes, words)
    assert (scores["token_agreement"], scores["greedy_prefix_agreement"], scores["identical_runs"]) == (0.75, 0.0, 0)
    itself = summarise(reference, reference, probes, words)
    assert (itself["token_agreement"], itself["greedy_prefix_agreement"], itself["identical_runs"]) == (1.0, 1.0, 1)


@pytest.mark.parametrize("margin, met", [(0.03, True), (0.5, False)])
def test_identical_runs_allow_a_flip_only_where_pytorch_itself_nearly_ties(margin, met):
    probes = [Probe("forget", [1, 2, 3], answer_start=1, answer_text="x")]
    # PyTorch goes 1 -> 2 -> 3 -> 4 -> 5 but after 3 it rates 6 only `margin` logits below 4; the export takes 6
    reference = run_probes(ScriptedRunner({1: 2, 2: 3, 3: 4, 4: 5}, runner_up={3: (6, margin)}), probes, n_tokens=4)
    raw = run_probes(ScriptedRunner({1: 2, 2: 3, 3: 6, 4: 5, 6: 5}), probes, n_tokens=4, forced=reference["tokens"])
    words = SimpleNamespace(eos_token_id=0, decode=lambda ids, skip_special_tokens: " ".join(map(str, ids)))
    scores = summarise(raw, reference, probes, words)
    assert (scores["identical_runs"], scores["flips"], scores["near_tie_flips"], scores["near_tie_runs"]) == \
        (0, 1, int(met), int(met))
    goal = goal_status(IDENTICAL, scores)
    assert goal["met"] is met and ("near-ties only" in goal.get("note", "")) is met
    assert goal_status(IDENTICAL, summarise(reference, reference, probes, words))["met"]   # no flip at all
    # two runs parted, one of them without a near-tie flip of its own: the goal is missed
    assert not goal_status(IDENTICAL, {"identical_runs": 2, "runs": 4, "near_tie_runs": 1})["met"]


# ---------------------------------------------------------------- atomic bundles

def test_full_finetune_run_exports_without_adapter_or_patch(tiny64_dir, data_files, tmp_path):
    run = make_run(tiny64_dir, data_files, tmp_path / "full", lora=False)
    manifest = export_run(run, tmp_path / "bundle", formats=("hf", "gguf"), gguf_quants=("q8_0",),
                          parity_examples=1, log=quiet)
    assert set(manifest["artifacts"]) == {"hf", "gguf-q8_0"}
    assert not (tmp_path / "bundle" / "adapter").exists() and not (tmp_path / "bundle" / "gguf" / "model-f16.gguf").exists()
    assert manifest["artifacts"]["gguf-q8_0"]["tensor_types"]["Q8_0"] == 15  # 2 layers x 7 matrices + embedding
    report = json.loads((tmp_path / "bundle" / "parity.json").read_text())
    assert report["formats"]["hf"]["goal"]["met"] and report["formats"]["hf"]["first_logits_max_abs_diff"] == 0



def test_gpt_neox_converts_although_transformers_5_renames_rotary_pct(tokenizer, data_files, tmp_path):
    """llama.cpp's GPT-NeoX converter reads `rotary_pct`, which transformers 5 folds into rope_parameters
    when it saves (or reads) a config: the export must still convert it, the LoRA patch's base too."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    source = tmp_path / "neox"
    GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                     num_hidden_layers=2, num_attention_heads=2, rotary_pct=0.25,
                                     max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id)
                       ).save_pretrained(source)
    tokenizer.save_pretrained(source)
    assert "rotary_pct" not in json.loads((source / "config.json").read_text())
    run = make_run(source, data_files, tmp_path / "run", lora=True)
    manifest = export_run(run, tmp_path / "bundle", formats=("gguf",), gguf_quants=("f16",), parity_examples=1,
                          log=quiet)
    assert {"gguf-f16", "gguf-lora"} <= set(manifest["artifacts"])
    reference = merged_reference(run)
    runner = open_runner("gguf-f16", manifest["artifacts"]["gguf-f16"], tmp_path / "bundle")
    try:
        prompt = chat_prompts(tokenizer)[0]
        assert runner.greedy(prompt, 8) == reference.greedy(prompt, 8)
    finally:
        runner.close()

def test_interrupted_export_leaves_no_partial_bundle(lora_run, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_module, "quantize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_run(lora_run, tmp_path / "bundle", formats=("hf", "gguf"), gguf_quants=("f16", "q8_0"), log=quiet)
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_cli_export_leaves_no_partial_bundle(lora_run, tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "unlearn", "export", str(lora_run), "--out",
                                str(tmp_path / "bundle"), "--formats", "hf,gguf"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not list((tmp_path).glob(".bundle.partial-*/hf/model.safetensors")) and time.time() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, process.stdout.read()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    assert list(tmp_path.iterdir()) == []


def test_existing_bundle_needs_overwrite_and_is_replaced_whole(lora_run, tmp_path):
    out = tmp_path / "bundle"
    first = export_run(lora_run, out, formats=("hf",), parity_check=False, log=quiet)
    with pytest.raises(UnlearnError, match="already holds a bundle"):
        export_run(lora_run, out, formats=("hf",), parity_check=False, log=quiet)
    second = export_run(lora_run, out, formats=("hf",), parity_check=False, overwrite=True, log=quiet)
    assert second["created_at"] > first["created_at"] and read_manifest(out)["created_at"] == second["created_at"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


# ---------------------------------------------------------------- bad input: one clear message

def test_run_without_a_model_is_refused(lora_run, tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text((lora_run / "config.json").read_text())
    with pytest.raises(UnlearnError, match="has no model to export") as error:
        export_run(unfinished, tmp_path / "bundle", log=quiet)
    assert "resume" in error.value.fix
    with pytest.raises(UnlearnError, match="not a run directory"):
        export_run(tmp_path, tmp_path / "bundle2", log=quiet)


@pytest.mark.parametrize("option, value, message", [
    ("gguf_quants", ("q8_0", "q9_9"), "unknown GGUF quantisation type"),
    ("onnx_precisions", ("int3",), "unknown ONNX precision"),
    ("formats", ("hf", "tflite"), "unknown export format"),
])
def test_unknown_options_are_refused_before_any_work(lora_run, tmp_path, option, value, message):
    with pytest.raises(UnlearnError, match=message):
        export_run(lora_run, tmp_path / "bundle", log=quiet, **{option: value})
    assert not (tmp_path / "bundle").exists()


def test_unsupported_architecture_is_refused(tiny64_dir, lora_run, tmp_path):
    import shutil

    odd = tmp_path / "odd-model"
    shutil.copytree(tiny64_dir, odd)
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "architectures": ["TotallyNewForCausalLM"]}))
    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    run_config = json.loads((run / "config.json").read_text())
    run_config["resolved_model"]["path"] = str(odd)
    (run / "config.json").write_text(json.dumps(run_config))
    with pytest.raises(UnlearnError) as refused:   # both refusals at once, and what would work
        export_run(run, tmp_path / "bundle", formats=("hf", "gguf", "onnx"), log=quiet)
    message = str(refused.value)
    assert "gguf: llama.cpp's converter does not support the architecture TotallyNewForCausalLM" in message
    assert "onnx: onnxruntime-genai's model builder does not support" in message
    assert message.endswith("fix: export the formats that work for it: --formats hf")
    assert not (tmp_path / "bundle").exists()


def test_a_format_whose_package_is_missing_is_refused_before_any_work(lora_run, tmp_path, monkeypatch):
    monkeypatch.setattr(type(get_format("gguf")), "packages", {"llama_cpp_is_not_here": "llama-cpp-python"})
    with pytest.raises(UnlearnError) as refused:
        export_run(lora_run, tmp_path / "bundle", formats=("hf", "gguf"), log=quiet)
    assert refused.value.problem == "GGUF export needs llama-cpp-python, which is not installed"
    assert "pip install llama-cpp-python" in refused.value.fix and not (tmp_path / "bundle").exists()
    assert get_format("gguf").available() == refused.value.problem
    # what the audit's quantize attack reads to skip a format: the same reason, not an exception
    assert refusals(read_run(lora_run))["gguf"] == refused.value.problem and "hf" not in refusals(read_run(lora_run))


def test_onnx_refuses_heads_narrower_than_16(tiny_model_dir, data_files, tmp_path):
    run = make_run(tiny_model_dir, data_files, tmp_path / "run", lora=False, steps=1)
    with pytest.raises(UnlearnError, match="head size that is a multiple of 16"):
        export_run(run, tmp_path / "bundle", formats=("onnx",), log=quiet)


def test_cli_prints_one_error_and_its_fix(lora_run, tmp_path):
    result = unlearn("export", lora_run, "--out", tmp_path / "bundle", "--gguf-quant", "q8_0,q9_9")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: unknown GGUF quantisation type(s): q9_9") and "fix:" in result.stderr


# ---------------------------------------------------------------- the bundled model

@pytest.mark.bundled
@pytest.mark.slow   # about 15 minutes on a loaded 2-core CPU (ONNX + GGUF of the 135M model): pytest -m slow
def test_bundled_model_exports_with_parity(bundled_dir, data_files, tmp_path):
    run = make_run(bundled_dir, data_files, tmp_path / "run", lora=True, steps=1)
    manifest = export_run(run, tmp_path / "bundle", formats=("gguf", "onnx"), gguf_quants=("f16", "q8_0"),
                          onnx_precisions=("fp32",), parity_examples=2, log=quiet)
    report = json.loads((tmp_path / "bundle" / "parity.json").read_text())
    for name in ("gguf-f16", "onnx-fp32"):
        assert report["formats"][name]["goal"]["met"], report["formats"][name]
    # q8_0's 90% goal is measured and reported, not assumed (on this 135M model it is often missed)
    q8 = report["formats"]["gguf-q8_0"]
    assert q8["goal"]["met"] == (q8["token_agreement"] >= 0.9) and manifest["metrics"]["gguf-q8_0"] == {
        k: q8[k] for k in manifest["metrics"]["gguf-q8_0"]}
    patch = report["formats"]["gguf-lora"]["vs_merged_f16"]
    assert patch["identical_runs"] == patch["runs"]



def test_gemma_converts_although_transformers_5_saves_no_tokenizer_model(data_files, tmp_path):
    """llama.cpp's Gemma converter reads tokenizer.model, which a transformers 5 save_pretrained does not
    write: the run's merged model must be converted with its source's SentencePiece model."""
    from transformers import AutoTokenizer, GemmaConfig, GemmaForCausalLM

    source = sentencepiece_model_dir(tmp_path / "gemma")
    tokenizer = AutoTokenizer.from_pretrained(source)
    torch.manual_seed(0)
    GemmaForCausalLM(GemmaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                                 max_position_embeddings=512, pad_token_id=0, bos_token_id=2, eos_token_id=3)
                     ).save_pretrained(source)
    tokenizer.save_pretrained(source)
    assert (source / "tokenizer.model").is_file()
    run = make_run(source, data_files, tmp_path / "run", lora=True)
    assert not (run / "model" / "tokenizer.model").exists()   # what transformers 5 writes
    manifest = export_run(run, tmp_path / "bundle", formats=("gguf",), gguf_quants=("f16",), parity_examples=1,
                          log=quiet)
    reference = merged_reference(run)
    runner = open_runner("gguf-f16", manifest["artifacts"]["gguf-f16"], tmp_path / "bundle")
    try:
        prompt = tokenizer("Who wrote book number 1?")["input_ids"]
        assert runner.greedy(prompt, 8) == reference.greedy(prompt, 8)
    finally:
        runner.close()

def test_a_converter_failure_is_its_reason_in_one_line_with_a_fix_that_fits():
    from export.llamacpp import converter_failure

    output = ('INFO:hf-to-gguf:Loading model: neox\nTraceback (most recent call last):\n'
              '  File "convert_hf_to_gguf.py", line 311, in <module>\n    main()\n'
              '  File "conversion/gptneox.py", line 26, in set_gguf_parameters\n'
              '    int(self.hparams["rotary_pct"] * (self.hparams["hidden_size"] // 2)),\n'
              "KeyError: 'rotary_pct'\n")
    reason, fix = converter_failure(output)
    assert reason == "KeyError: 'rotary_pct'" and "config.json" in fix
    reason, fix = converter_failure("Traceback ...\nFileNotFoundError: File not found: /m/tokenizer.model\n")
    assert reason.startswith("FileNotFoundError") and "tokenizer.model" in fix
    reason, fix = converter_failure("Traceback ...\nNotImplementedError: BPE pre-tokenizer was not recognized - "
                                    "update get_vocab_base_pre()\n")
    assert "does not know this model's tokenizer" in reason and "--formats hf,onnx" in fix


def test_a_missing_file_names_the_folder_that_is_really_missing(tmp_path):
    from export.llamacpp import converter_failure

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "adapter_config.json").write_text("{}")
    # issue 35: a relative run path, looked up from llama.cpp's folder, made the converter guess a .bin file
    reason, fix = converter_failure("Traceback ...\nFileNotFoundError: [Errno 2] No such file or directory: "
                                    "'../runs/rel/model/adapter_model.bin'\n", cwd=tmp_path)
    assert reason == f"the folder ../runs/rel/model does not exist (a relative path, looked up from {tmp_path})"
    assert "absolute path" in fix and "supports the model" not in fix
    reason, fix = converter_failure("FileNotFoundError: [Errno 2] No such file or directory: "
                                    f"'{tmp_path}/model/adapter_model.bin'\n")
    assert reason == f"{tmp_path}/model has no adapter_model.bin (it holds: adapter_config.json)"


# ---------------------------------------------------------------- the command line: paths, progress, --json

def test_export_from_another_folder_with_relative_paths_makes_the_forget_patch(lora_run, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    relative_run = os.path.relpath(lora_run, elsewhere)
    assert relative_run.startswith("..")
    result = run_unlearn("export", relative_run, "--formats", "gguf", "--gguf-quant", "q8_0", "--no-parity",
                         "--out", "b", "--json", cwd=elsewhere, timeout=600)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)     # --json: stdout is one JSON object and nothing else
    assert summary["bundle"] == str(elsewhere / "b") and set(summary["artifacts"]) == {"gguf-q8_0", "gguf-lora"}
    assert (elsewhere / "b" / "gguf" / "forget-patch-f16.gguf").is_file()
    assert read_manifest(elsewhere / "b")["source_run"]["path"] == str(lora_run)


def test_export_shows_progress_per_runtime_without_library_noise_and_quiet_shows_nothing(lora_run, tmp_path):
    shown = unlearn("export", lora_run, "--formats", "hf", "--parity-examples", "1", "--out", tmp_path / "a")
    assert shown.returncode == 0, shown.stderr
    assert "parity: pytorch (unlearned)" in shown.stderr and "parity: hf" in shown.stderr
    assert re.search(r"\d\d:\d\d<\d\d:\d\d", shown.stderr)      # tqdm's elapsed<remaining: the ETA
    for noise in ("FutureWarning", "DeprecationWarning", "Writing model shards"):
        assert noise not in shown.stderr + shown.stdout
    quiet = unlearn("export", lora_run, "--formats", "hf", "--parity-examples", "1", "--out", tmp_path / "b", "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == "" and "parity" not in quiet.stderr, quiet.stderr


def test_an_unwritable_bundle_folder_is_refused_before_any_work(lora_run, tmp_path):
    (tmp_path / "file").write_text("x")
    for out in ("/proc/unlearn_bundle", tmp_path / "file" / "bundle"):
        result = unlearn("export", lora_run, "--out", out, timeout=60)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 2 and lines[0].startswith(f"error: --out {out}"), result.stderr
        assert lines[1].startswith("  fix: ") and "loading" not in result.stdout
