"""ZeroGPU on Hugging Face Spaces: where the `spaces` package is installed, handlers that run a model in
the app process (probing) are wrapped in `spaces.GPU`, which lends them a GPU for the call. Elsewhere the
decorator changes nothing. Training runs in a subprocess, which ZeroGPU cannot lend a GPU to: on a
ZeroGPU Space it uses the CPU (on a Space with a dedicated GPU, `--device auto` picks CUDA)."""
from __future__ import annotations

import importlib.util


def on_gpu(handler):
    if importlib.util.find_spec("spaces") is None:
        return handler
    import spaces

    return spaces.GPU(handler)
