"""The original model as a reference, without keeping a second copy in memory where it can be avoided.

- NPO / IdkDPO compare against NLL_ref of *fixed* sequences: computed once before training, cached per
  example in the run directory (so a resumed run reuses it), then looked up by example index.
- KL terms need the original's full next-token distribution on fresh retain batches: with LoRA that is
  the same model with the adapter disabled; with full fine-tuning a frozen copy (one more set of weights).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from safetensors.torch import load_file, save_file

from .scoring import score_nll


def cache_reference_nll(model, views: dict, pad_id: int, run_dir, config, accelerator, is_lora: bool) -> dict:
    """{view: NLL_ref [N]} for each view, loaded from the run directory or computed now and saved there."""
    if not views:
        return {}
    # Every process looks for the cache at the same moment: one that looked after rank 0 wrote it would
    # skip the barrier below, and the others would wait for it forever.
    accelerator.wait_for_everyone()
    if run_dir.reference_path.is_file():
        cached = load_file(str(run_dir.reference_path))
        if set(cached) == set(views) and all(len(cached[v]) == len(views[v]) for v in views):
            return cached
    # A fresh LoRA adapter is a no-op (B = 0), but disabling it makes "the original" explicit.
    context = model.disable_adapter() if is_lora else nullcontext()
    with context:
        cached = {view: score_nll(model, items, pad_id, config.batch_size, accelerator.autocast)[0]
                  for view, items in views.items()}
    if accelerator.is_main_process:
        save_file({k: v.contiguous() for k, v in cached.items()}, str(run_dir.reference_path))
    accelerator.wait_for_everyone()
    return cached


class ReferenceLogits:
    """Callable giving the original model's logits for a batch part (no grad)."""

    def __init__(self, model, frozen_copy=None, autocast=nullcontext):
        self.model = model          # the trained model: used with its LoRA adapter disabled
        self.frozen_copy = frozen_copy
        self.autocast = autocast

    @torch.no_grad()
    def __call__(self, part: dict, keep: int) -> torch.Tensor:
        kwargs = dict(input_ids=part["input_ids"], attention_mask=part["attention_mask"], logits_to_keep=keep)
        with self.autocast():
            if self.frozen_copy is not None:
                return self.frozen_copy(**kwargs).logits
            model = getattr(self.model, "module", self.model)  # under DDP, the wrapped PeftModel
            with model.disable_adapter():
                return model(**kwargs).logits
