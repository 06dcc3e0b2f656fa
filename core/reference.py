"""The original model as a reference, without keeping a second copy in memory where it can be avoided.

- NPO / IdkDPO compare against NLL_ref of *fixed* sequences: computed once before training, cached per
  example in the run directory (so a resumed run reuses it), then looked up by example index.
- KL terms need the original's full next-token distribution on fresh retain batches: with LoRA that is
  the same model with the adapter disabled; with full fine-tuning a frozen copy (one more set of weights).
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from safetensors.torch import load_file, save_file

from .errors import UnlearnError
from .runs import usual_permissions
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
        usual_permissions(run_dir.reference_path)
    accelerator.wait_for_everyone()
    return cached


class OriginalModel:
    """The original model's outputs for a batch part, without grad: its logits (KL terms, distillation) and
    a decoder layer's hidden states (representation methods such as RMU)."""

    def __init__(self, model, frozen_copy=None, autocast=nullcontext):
        self.model = model          # the trained model: used with its LoRA adapter disabled
        self.frozen_copy = frozen_copy
        self.autocast = autocast

    @contextmanager
    def _original(self):
        if self.frozen_copy is not None:
            yield self.frozen_copy
            return
        model = getattr(self.model, "module", self.model)  # under DDP, the wrapped PeftModel
        with adapter_off_keeping_trainable(model):
            yield model

    @torch.no_grad()
    def __call__(self, part: dict, keep: int) -> torch.Tensor:
        """Logits of the last `keep` positions (as forward_logits keeps them for the current model)."""
        kwargs = dict(input_ids=part["input_ids"], attention_mask=part["attention_mask"], logits_to_keep=keep)
        with self.autocast(), self._original() as model:
            return model(**kwargs).logits

    @torch.no_grad()
    def hidden(self, part: dict, layer: int) -> torch.Tensor:
        """Output hidden states [B, T, D] of decoder layer `layer`."""
        with self.autocast(), self._original() as model:
            return layer_output(model, part, layer)


def layer_output(model, part: dict, layer: int) -> torch.Tensor:
    """Run `model` on a batch part and return decoder layer `layer`'s output hidden states [B, T, D]. A
    forward hook on that one module (not output_hidden_states, which keeps every layer's) takes it; the
    logits of one position only are computed."""
    captured = []

    def keep(module, args, output):
        captured.append(output[0] if isinstance(output, tuple) else output)

    handle = decoder_layers(model)[layer].register_forward_hook(keep)
    try:
        model(input_ids=part["input_ids"], attention_mask=part["attention_mask"], logits_to_keep=1)
    finally:
        handle.remove()
    return captured[0]


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's stack of decoder layers, whatever the family calls it (model.layers, transformer.h,
    gpt_neox.layers, model.decoder.layers): the ModuleList as long as the config's layer count."""
    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == count]
    if not stacks:
        raise UnlearnError("could not find this model's decoder layers",
                           "use a method that does not read hidden states (e.g. npo_rt)")
    return stacks[0]


@contextmanager
def adapter_off_keeping_trainable(model):
    """A PEFT model with its adapter switched off (the original model), for as long as the block runs. peft's
    disable_adapter() makes every adapter trainable again on exit: what a method chose to train (RMU's and
    MUDMAN's layers) is put back, or the next backward fills gradients of adapters no optimizer steps."""
    flags = [(param, param.requires_grad) for param in model.parameters()]
    try:
        with model.disable_adapter():
            yield model
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
