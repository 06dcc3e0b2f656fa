"""Load a run's model as plain PyTorch: LoRA merged into the base, or the fully fine-tuned model."""
from __future__ import annotations

import torch

from core.models import load_model, load_run_model, load_tokenizer

from .source import RunSource


def load_unlearned(source: RunSource, dtype: torch.dtype = torch.float32):
    """The unlearned model in eval mode; a LoRA adapter is merged into its base (no PEFT wrapper left)."""
    return load_run_model(source.run_dir, dtype=dtype).eval()


def load_original(source: RunSource, dtype: torch.dtype = torch.float32):
    """The model before unlearning, to show whether an artifact recovers what was forgotten."""
    return load_model(source.base_model, dtype=dtype).eval()


def load_run_tokenizer(source: RunSource):
    """The tokenizer saved with the run's model (chat template included)."""
    return load_tokenizer(str(source.model_dir))
