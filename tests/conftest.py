"""Shared fixtures: a tiny random Llama that uses the bundled model's real tokenizer (and chat template),
and small forget/retain files. Tests train these tiny models for real; a few use the bundled model."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch


SUPPORT_TABLE_START, SUPPORT_TABLE_END = "<!-- support-table:start -->", "<!-- support-table:end -->"


def pytest_addoption(parser):
    parser.addoption("--support-table", metavar="MARKDOWN",
                     help="write tests/test_architectures.py's outcomes as the family x format table into this "
                          f"file, between the lines {SUPPORT_TABLE_START} and {SUPPORT_TABLE_END}")


def pytest_configure(config):
    config.support_cells = {}   # family -> check -> "yes" | "fails" | "refused: why", filled by the tests


def pytest_sessionfinish(session):
    target = session.config.getoption("--support-table")
    if target and session.config.support_cells:
        from test_architectures import support_table

        path = Path(target)
        text = path.read_text(encoding="utf-8")
        head, rest = text.split(SUPPORT_TABLE_START, 1)
        tail = rest.split(SUPPORT_TABLE_END, 1)[1]
        table = support_table(session.config.support_cells)
        path.write_text(f"{head}{SUPPORT_TABLE_START}\n{table}{SUPPORT_TABLE_END}{tail}", encoding="utf-8")


@pytest.fixture(scope="session")
def bundled_dir() -> Path:
    from core.models import bundled_model_dir

    return bundled_model_dir()


@pytest.fixture(scope="session")
def tokenizer(bundled_dir):
    from core.models import load_tokenizer

    return load_tokenizer(str(bundled_dir))


def build_tiny_model(tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer, 32-wide Llama (random weights) saved with the bundled tokenizer."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_qa_files(root: Path, n_forget: int, n_retain: int) -> dict[str, Path]:
    """Forget QA about a fictitious author and retain arithmetic QA, as JSON Lines under `root`."""
    forget = [{"question": f"Who wrote book number {i}?", "answer": f"Book {i} was written by Zorblat Quenfeather."}
              for i in range(n_forget)]
    retain = [{"question": f"What is {i} plus {i}?", "answer": f"{i} plus {i} is {2 * i}."} for i in range(n_retain)]
    paths = {"forget": root / "forget.jsonl", "retain": root / "retain.jsonl"}
    for name, rows in (("forget", forget), ("retain", retain)):
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


@pytest.fixture()
def qa_files(tmp_path) -> dict[str, Path]:
    """Eight forget and sixteen retain QA pairs as JSON Lines."""
    return write_qa_files(tmp_path, 8, 16)


def sentencepiece_model_dir(root: Path, tokenizer_class: str = "GemmaTokenizer") -> Path:
    """A folder holding only a SentencePiece tokenizer.model (as Gemma and Phi-3 ship), trained here on a
    few lines of text, and the tokenizer config that names the family's tokenizer class."""
    import sentencepiece

    root.mkdir(parents=True)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(f"Book {i} was written by Zorblat Quenfeather. What is {i} plus {i}? "
                                f"{i} plus {i} is {2 * i}." for i in range(300)))
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(root / "sp"), vocab_size=400, model_type="bpe", pad_id=0, unk_id=1,
        bos_id=2, eos_id=3, character_coverage=1.0, byte_fallback=True, minloglevel=2)
    (root / "sp.model").rename(root / "tokenizer.model")
    (root / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": tokenizer_class}))
    return root


def merged_reference(run: Path):
    """The unlearned model rebuilt here with PEFT, independently of the export code."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from export.hf import TorchRunner

    base = json.loads((run / "config.json").read_text())["resolved_model"]["path"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(run / "model"))
    return TorchRunner(model.merge_and_unload().eval())


REPO = Path(__file__).resolve().parents[1]


def run_unlearn(*args, env: dict | None = None, cwd=None, timeout: int = 300):
    """`unlearn ARGS` in a fresh interpreter (`python -m unlearn`), output captured; `env` adds variables
    to this process's environment."""
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "unlearn", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})


def module_env(folder: Path, variable: str, module: str, source: str) -> dict:
    """Write `source` as module `module` in `folder` and return the environment that makes `unlearn` import
    it through `variable` (UNLEARN_METHOD_MODULES, UNLEARN_SUITE_MODULES)."""
    import os

    (folder / f"{module}.py").write_text(source)
    return {variable: module, "PYTHONPATH": os.pathsep.join([str(folder), str(REPO)])}


def train_tiny_run(root: Path, model_dir: Path, forget: int = 8, retain: int = 8, **settings):
    """A finished npo_rt run on the tiny model (fresh forget/retain files in `root`); `settings` override the
    fast defaults. Returns its UnlearnConfig (`.out` is the run)."""
    from core.config import UnlearnConfig
    from core.trainer import train

    files = write_qa_files(root, forget, retain)
    config = UnlearnConfig(**{"model": str(model_dir), "method": "npo_rt", "forget": str(files["forget"]),
                              "retain": str(files["retain"]), "out": str(root / "run"), "max_steps": 3,
                              "batch_size": 4, "lr": 1e-3, "save_steps": 0, "eval_examples": 8, "device": "cpu",
                              **settings})
    train(config, **quiet())
    return config


def quiet(**kwargs) -> dict:
    """train() keyword arguments for tests: no progress bar, no log lines."""
    return dict(show_progress=False, log=lambda message: None, **kwargs)


class StopAfter(threading.Event):
    """A stop request that arrives after the trainer has asked `polls` times (once per step)."""

    def __init__(self, polls: int):
        super().__init__()
        self.remaining = polls

    def is_set(self) -> bool:
        self.remaining -= 1
        return self.remaining < 0 or super().is_set()


@pytest.fixture()
def tiny_config(tiny_model_dir, qa_files, tmp_path):
    """A fast npo_rt config on the tiny model; tests replace() what they vary."""
    from core.config import UnlearnConfig

    return UnlearnConfig(model=str(tiny_model_dir), method="npo_rt", forget=str(qa_files["forget"]),
                         retain=str(qa_files["retain"]), out=str(tmp_path / "run"), max_steps=4, batch_size=4,
                         lr=1e-3, save_steps=0, eval_examples=8, device="cpu")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def studio_server(tmp_path_factory, tiny_model_dir):
    """The studio on a free local port, offering the tiny model as "local — tiny"; runs isolated per session."""
    from studio.app import build_app, create_studio

    tiny = tmp_path_factory.mktemp("models") / "tiny"
    tiny.symlink_to(tiny_model_dir)
    studio = create_studio(tmp_path_factory.mktemp("runs"), shared=False, local_models=[str(tiny)], device="cpu")
    app = build_app(studio)
    app.queue()
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield studio, f"http://127.0.0.1:{port}/"
    job = studio.jobs.busy()
    if job:   # a failed test must not leave a training process behind
        job.process.terminate()
        job.process.wait(30)
    app.close()
