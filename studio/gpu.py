"""ZeroGPU on Hugging Face Spaces: where the `spaces` package is installed, handlers that run a model in
the app process (probing, evaluating) are wrapped in `spaces.GPU`, which lends them a GPU for the call, and
they load their models on `call_device()`, which is CUDA while a GPU is lent (or on any machine with one)
and the CPU otherwise. Elsewhere the decorator changes nothing. Training runs in a subprocess, which ZeroGPU
cannot lend a GPU to: on a ZeroGPU Space it uses the CPU (on a Space with a dedicated GPU, `--device auto`
picks CUDA)."""
from __future__ import annotations

import importlib.util


def on_gpu(handler):
    if importlib.util.find_spec("spaces") is None:
        return handler
    import spaces

    return spaces.GPU(handler)


def call_device() -> str:
    """Where a handler's models go for this call: the GPU it was lent (or the machine's), else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
