"""Shared fixtures: a tiny random Llama that uses the bundled model's real tokenizer (and chat template),
and small forget/retain files. Tests train these tiny models for real; a few use the bundled model."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch


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
