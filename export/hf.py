"""The PyTorch side of every bundle: the merged model written as a Hugging Face folder (what the `hf`
artifact is, export/formats/hf.py, and what every converter reads), and the runner every format is
checked against."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .runtime import Runner


def write_hf(model, tokenizer, target: Path) -> list[Path]:
    """save_pretrained (safetensors only) of the merged model and its tokenizer into `target`."""
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return sorted(p for p in target.iterdir() if p.is_file())


class TorchRunner(Runner):
    """A transformers model with its DynamicCache, in fp32 on the CPU unless told otherwise."""
    name = "pytorch"

    def __init__(self, model, name: str = "pytorch"):
        self.model = model.eval()
        self.name = name
        self.past = None

    @torch.inference_mode()
    def prefill(self, ids: list[int]) -> np.ndarray:
        out = self.model(input_ids=torch.tensor([ids]), use_cache=True)
        self.past = out.past_key_values
        return out.logits[0].float().numpy()

    @torch.inference_mode()
    def step(self, token: int) -> np.ndarray:
        out = self.model(input_ids=torch.tensor([[token]]), past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        return out.logits[0, -1].float().numpy()

    def close(self) -> None:
        self.past = None
