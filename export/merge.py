"""Load a run's model as plain PyTorch: LoRA merged into the base, or the fully fine-tuned model."""
from __future__ import annotations

import torch

from core.errors import UnlearnError
from core.models import load_model, load_tokenizer

from .source import RunSource


def load_unlearned(source: RunSource, dtype: torch.dtype = torch.float32):
    """The unlearned model in eval mode; a LoRA adapter is merged into its base (no PEFT wrapper left)."""
    if not source.is_lora:
        return load_model(str(source.model_dir), dtype=dtype).eval()
    from peft import PeftModel

    base = load_model(source.base_model, dtype=dtype)
    try:
        model = PeftModel.from_pretrained(base, str(source.model_dir))
    except (OSError, ValueError, KeyError) as exc:
        raise UnlearnError(f"the LoRA adapter in {source.model_dir} does not fit its base model: {exc}",
                           "export the run against the base model it was trained on") from None
    return model.merge_and_unload().eval()


def load_original(source: RunSource, dtype: torch.dtype = torch.float32):
    """The model before unlearning, to show whether an artifact recovers what was forgotten."""
    return load_model(source.base_model, dtype=dtype).eval()


def load_run_tokenizer(source: RunSource):
    """The tokenizer saved with the run's model (chat template included)."""
    return load_tokenizer(str(source.model_dir))
