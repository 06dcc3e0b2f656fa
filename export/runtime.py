"""One small interface over every runtime an artifact runs in (PyTorch, llama.cpp, onnxruntime).

A runner keeps its own KV cache: `prefill` runs a prompt and returns the logits of every position,
`step` feeds one more token and returns the next logits. Parity checks, the benchmark and chat are
written once on top of these two calls, so each format is exercised through its real runtime.
"""
from __future__ import annotations

import os
import time
from typing import Iterator

import numpy as np


def default_threads() -> int:
    """Every runtime gets the same number of CPU threads, so decode speeds are comparable."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class Runner:
    """Base class: subclasses implement `prefill(ids) -> [len, vocab]` and `step(token) -> [vocab]`."""
    name = "runner"

    def prefill(self, ids: list[int]) -> np.ndarray:
        raise NotImplementedError

    def step(self, token: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Free the runtime's memory (sessions, contexts) now rather than at garbage collection."""

    # ------------------------------------------------ built on prefill/step
    def greedy(self, ids: list[int], n_tokens: int) -> list[int]:
        """Exactly `n_tokens` argmax tokens (no stop at end-of-sequence, so every format emits as many)."""
        return list(self.stream(ids, n_tokens))

    def stream(self, ids: list[int], max_new_tokens: int, stop_ids: tuple[int, ...] = (),
               temperature: float = 0.0, seed: int = 0) -> Iterator[int]:
        """Yield new tokens one by one: argmax at temperature 0, else seeded sampling."""
        rng = np.random.default_rng(seed)
        logits = self.prefill(ids)[-1]
        for i in range(max_new_tokens):
            token = _pick(logits, temperature, rng)
            yield token
            if token in stop_ids or i == max_new_tokens - 1:
                return
            logits = self.step(token)

    def decode_speed(self, ids: list[int], n_tokens: int) -> float:
        """Greedy decode tokens per second, prefill excluded (it is not what an edge chat waits on)."""
        logits = self.prefill(ids)[-1]
        started = time.perf_counter()
        for _ in range(n_tokens):
            logits = self.step(int(np.argmax(logits)))
        return n_tokens / (time.perf_counter() - started)


def _pick(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    scaled = (logits - logits.max()) / temperature
    probs = np.exp(scaled.astype(np.float64))
    return int(rng.choice(len(probs), p=probs / probs.sum()))


def answer_nll(logits: np.ndarray, ids: list[int], answer_start: int) -> tuple[float, int]:
    """Summed NLL of ids[answer_start:] under `logits` ([len(ids), vocab], position t predicts t+1)."""
    logits = logits.astype(np.float64)
    targets = np.asarray(ids[answer_start:])
    rows = logits[answer_start - 1:len(ids) - 1]
    log_norm = np.log(np.exp(rows - rows.max(-1, keepdims=True)).sum(-1)) + rows.max(-1)
    nll = log_norm - rows[np.arange(len(targets)), targets]
    return float(nll.sum()), len(targets)
