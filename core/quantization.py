"""Quantisation-aware forgetting: the method's forget loss also taken on 4-bit fake-quantised weights.

Why: unlearning moves weights by less than one 4-bit bin, so quantising the unlearned model lands on the
original's codes and the forgetting is undone (Zhang et al., ICLR 2025). Taking the forget loss on the
quantised weights as well pushes the update across bins. The straight-through form (the forward sees
Q(w), the backward treats Q as the identity) follows DurableUn (arXiv 2605.02196, abstract); the exact term
is ours: `--quant-aware W` adds W x (each forget term of the method, on Q(θ)), named quant_<term>.

Q is llama.cpp's q4_0 reference rule (ggml `quantize_row_q4_0_ref`), per row of an [out, in] Linear weight
in blocks of 32 input features: d = (the block's element of largest |w|, sign kept) / -8, q = min(15,
floor(w/d + 8.5)), dequantised (q - 8) x fp16(d). It stands in for the exports' q4_0 exactly and for q4_k_m
only roughly. As llama.cpp, it leaves alone 1-D tensors, embeddings, the output head (kept at a higher type)
and weights whose input size is not a multiple of 32. Under LoRA the merged weight W + s·BA is quantised
(what export quantises), and the straight-through gradient reaches A and B.

Cost: one more forward and backward of the forget batch per micro-batch plus a fake-quantisation of every
Linear weight per forward, O(parameters): on NPO+RT, measured 1.93x a step under LoRA (the merged weight is
quantised per forward) and 1.55x in full fine-tuning (docs/results/step_cost.md).
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from .methods.base import StepInputs

Q4_0_BLOCK = 32


def q4_0_roundtrip(weight: torch.Tensor) -> torch.Tensor:
    """dequantise(quantise(weight)) by the q4_0 reference rule, computed in fp32, returned in weight's dtype;
    rows of `weight` in blocks of 32 consecutive elements (its last dimension must be a multiple of 32)."""
    blocks = weight.detach().float().reshape(-1, Q4_0_BLOCK)
    largest = blocks.abs().argmax(dim=1, keepdim=True)   # the first one on ties, as ggml's strict `<`
    scale = blocks.gather(1, largest) / -8
    inverse = torch.where(scale != 0, 1.0 / scale, torch.zeros_like(scale))
    codes = torch.floor(blocks * inverse + 8.5).clamp(0, 15)   # ggml truncates a positive number: floor
    stored_scale = scale.half().float()                         # the block's scale is kept in fp16
    return ((codes - 8) * stored_scale).reshape(weight.shape).to(weight.dtype)


def fake_quantize(weight: torch.Tensor) -> torch.Tensor:
    """q4_0_roundtrip(weight) in the forward, the identity in the backward (straight-through estimator)."""
    return weight + (q4_0_roundtrip(weight) - weight).detach()


def quantizable(weight: torch.Tensor) -> bool:
    return weight.dim() == 2 and weight.shape[1] % Q4_0_BLOCK == 0


class FakeQuantizer:
    """A context in which every quantisable Linear of `model` (a LoRA layer: its merged weight) runs on its
    fake-quantised weight. `paused()` lets the full-precision model through for a moment (the original
    model under LoRA, which is the same modules with the adapter off)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.active = False
        self._saved: dict[torch.nn.Module, object] = {}

    def __enter__(self) -> "FakeQuantizer":
        for module in quantized_modules(self.model):
            self._saved[module] = module.__dict__.get("forward")   # a hook library may have set one
            module.forward = _quantized_forward(module, module.forward, self)
        self.active = True
        return self

    def __exit__(self, *exc) -> None:
        self.active = False
        for module, previous in self._saved.items():
            del module.forward
            if previous is not None:
                module.forward = previous
        self._saved.clear()

    def paused(self) -> "_Paused":
        return _Paused(self)


class _Paused:
    def __init__(self, quantizer: FakeQuantizer):
        self.quantizer = quantizer

    def __enter__(self):
        self.was, self.quantizer.active = self.quantizer.active, False

    def __exit__(self, *exc):
        self.quantizer.active = self.was


def quantized_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The Linear layers q4_0 would quantise: LoRA layers (as one merged weight) and plain Linears outside
    them, but not the output head."""
    root = getattr(model, "module", model)   # under DDP
    head = root.get_output_embeddings() if hasattr(root, "get_output_embeddings") else None
    lora = [m for m in root.modules() if _is_lora_linear(m)]
    inside_lora = {id(sub) for m in lora for sub in m.modules()}
    plain = [m for m in root.modules() if isinstance(m, torch.nn.Linear) and id(m) not in inside_lora]
    return [m for m in lora + plain if m is not head and quantizable(_base(m).weight)]


def _is_lora_linear(module) -> bool:
    return hasattr(module, "get_delta_weight") and isinstance(getattr(module, "base_layer", None), torch.nn.Linear)


def _base(module) -> torch.nn.Linear:
    return module.base_layer if _is_lora_linear(module) else module


def merged_weight(module) -> torch.Tensor:
    """The weight the layer applies: a LoRA layer's base weight plus its active adapters' s·BA (in fp32)."""
    weight = _base(module).weight.float()
    if not _is_lora_linear(module) or module.disable_adapters or module.merged:
        return weight
    for adapter in module.active_adapters:
        if adapter in module.lora_A:
            weight = weight + module.get_delta_weight(adapter).float()
    return weight


def _quantized_forward(module, full_precision, quantizer: FakeQuantizer):
    def forward(x, *args, **kwargs):
        if not quantizer.active or (_is_lora_linear(module) and module.disable_adapters):
            return full_precision(x, *args, **kwargs)
        bias = _base(module).bias
        weight = fake_quantize(merged_weight(module))
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))
    return forward


# ---------------------------------------------------------------- the switch: --quant-aware W

class _OtherView(Exception):
    """A method's loss asked for a view other than forget: its forget terms are over."""


class ForgetOnlyInputs(StepInputs):
    """StepInputs that forward the forget view only, under a FakeQuantizer; the original model's outputs
    stay full precision (the reference a KL or distillation term compares against)."""

    quantizer: FakeQuantizer

    def _check(self, view: str) -> None:
        if view != "forget":
            raise _OtherView(view)

    def logits(self, view):
        self._check(view)
        return super().logits(view)

    def hidden(self, view, layer):
        self._check(view)
        return super().hidden(view, layer)

    def kl(self, view):
        self._check(view)
        return super().kl(view)

    def original_logits(self, view):
        self._check(view)
        with self.quantizer.paused():
            return super().original_logits(view)

    def original_hidden(self, view, layer):
        self._check(view)
        with self.quantizer.paused():
            return super().original_hidden(view, layer)


def quant_aware_terms(method, inputs: StepInputs, weight: float) -> Iterator[tuple[str, torch.Tensor]]:
    """The method's forget terms (names starting with "forget", yielded before any other view is read)
    once more on the fake-quantised model, times `weight`, as quant_<name>. The weights stay swapped while
    each term is backpropagated (the trainer's backward runs at the yield), so recomputed activations
    (gradient checkpointing) see the same weights."""
    quantizer = FakeQuantizer(inputs.model)
    again = inputs.fresh(ForgetOnlyInputs)
    again.quantizer = quantizer
    with quantizer:
        terms = method.loss_terms(again)
        try:
            for name, term in terms:
                if not name.startswith("forget"):
                    break
                yield f"quant_{name}", weight * term
                again.release_graphs()
        except _OtherView:
            pass
        finally:
            terms.close()
