"""Quantisation-aware forgetting: the method's forget loss also taken on 4-bit fake-quantised weights.

Why: unlearning moves weights by less than one 4-bit bin, so quantising the unlearned model lands on the
original's codes and the forgetting is undone (Zhang et al., ICLR 2025). Taking the forget loss on the
quantised weights as well pushes the update across bins. The straight-through form (the forward sees
Q(w), the backward treats Q as the identity) follows DurableUn (arXiv 2605.02196, abstract); the exact term
is ours: `--quant-aware W` adds W x (each forget term of the method, on Q(θ)), named quant_<term>.

Q is llama.cpp's own quantisation of each weight under a GGUF file type (`--quant-aware-format`): q4_0
(every Linear in q4_0, the default) or q4_k_m (the per-tensor mix llama.cpp writes: q4_K, q6_K, and q5_0 /
q8_0 where a row is not a multiple of 256, which on SmolLM2-135M is most weights). The formats and the choice
are core/ggml_formats.py, pinned against ggml itself. As llama.cpp, it leaves alone 1-D tensors, embeddings,
the output head (kept at a higher type) and weights whose input size is not a multiple of 32. Under LoRA the
merged weight W + s·BA is quantised (what export quantises), and the straight-through gradient reaches A
and B.

Cost: one more forward and backward of the forget batch per micro-batch plus a fake-quantisation of every
Linear weight per forward, O(parameters): on NPO+RT, measured 1.93x a step under LoRA (the merged weight is
quantised per forward) and 1.55x in full fine-tuning (docs/results/step_cost.md); with q4_k_m, whose K formats
search their scales, 1.88x and 2.31x in full fine-tuning and under LoRA; both files at once 2.48x and 3.08x
(docs/benchmarks.md).
Memory: the quantised weights are not kept for the backward, only their blocks' steps (_StraightThroughLinear
quantises again there with them); kept, they were an fp32 copy of every quantised weight, +0.7-1.0 GiB peak on
SmolLM2-135M (docs/benchmarks.md).
"""
from __future__ import annotations

import functools
from typing import Iterator

import torch
import torch.nn.functional as F

from .ggml_formats import block_steps, file_types, roundtrip, tensor_type
from .methods.base import StepInputs


class FakeQuantizer:
    """A context in which every quantisable Linear of `model` (a LoRA layer: its merged weight) runs on its
    weight fake-quantised as llama.cpp would store it under `file_type`. `paused()` lets the full-precision
    model through for a moment (the original model under LoRA, which is the same modules with the adapter
    off)."""

    def __init__(self, model: torch.nn.Module, file_type: str = "q4_0"):
        self.model, self.file_type = model, file_type
        self.active = False
        self._saved: dict[torch.nn.Module, object] = {}

    def __enter__(self) -> "FakeQuantizer":
        for module, kind in quantized_kinds(self.model, self.file_type).items():
            self._saved[module] = module.__dict__.get("forward")   # a hook library may have set one
            module.forward = _quantized_forward(module, module.forward, self, kind)
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
    """The Linear layers llama.cpp would quantise in blocks: LoRA layers (as one merged weight) and plain
    Linears outside them, but not the output head."""
    return list(quantized_kinds(model, "q4_0"))


def quantized_kinds(model: torch.nn.Module, file_type: str) -> dict[torch.nn.Module, str]:
    """{Linear layer: the format llama.cpp stores its weight in under `file_type`} (core/ggml_formats.py)."""
    root = getattr(model, "module", model)   # under DDP
    head = root.get_output_embeddings() if hasattr(root, "get_output_embeddings") else None
    names = {id(m): name for name, m in root.named_modules()}
    lora = [m for m in root.modules() if _is_lora_linear(m)]
    inside_lora = {id(sub) for m in lora for sub in m.modules()}
    plain = [m for m in root.modules() if isinstance(m, torch.nn.Linear) and id(m) not in inside_lora]
    layers = getattr(getattr(root, "config", None), "num_hidden_layers", 0) or 0
    kinds = {}
    for module in lora + plain:
        if module is head:
            continue
        # tensor_type leaves out a row not in blocks of 32
        kind = tensor_type(names[id(module)], _base(module).weight.shape[1], file_type, layers)
        if kind is not None:
            kinds[module] = kind
    return kinds


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


def _quantized_forward(module, full_precision, quantizer: FakeQuantizer, kind: str):
    def forward(x, *args, **kwargs):
        if not quantizer.active or (_is_lora_linear(module) and module.disable_adapters):
            return full_precision(x, *args, **kwargs)
        return _StraightThroughLinear.apply(x, merged_weight(module), _base(module).bias,
                                            functools.partial(merged_weight, module), kind)
    return forward


class _StraightThroughLinear(torch.autograd.Function):
    """x · Q(W)ᵀ + b, with the straight-through gradient (the weight's is the one Q(W) gets), that keeps for
    the backward x and the blocks' steps that quantising W found, not Q(W): kept, Q(W) was an fp32 copy of every
    quantised weight held from the term's forward to its backward (405 MiB on SmolLM2-135M, 4 bytes a weight on
    any model, under LoRA too); the steps are 1/32-1/16 of that. The backward quantises the weight again with
    those steps (no search), rebuilt by `rebuild` (the weights do not change between a term's forward and
    backward: the optimizer steps after both); W itself, under LoRA the merged W + s·BA, is an input only so
    that its gradient reaches the parameters it is made of."""

    @staticmethod
    def forward(ctx, x, weight, bias, rebuild, kind):
        ctx.rebuild, ctx.kind, ctx.weight_dtype = rebuild, kind, weight.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        steps = block_steps(weight, kind)
        ctx.save_for_backward(x, *steps)
        quantized = roundtrip(weight, kind, steps).to(x.dtype)
        return F.linear(x, quantized, None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad):
        x, *steps = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:   # not for a first layer whose input needs none: no weight rebuilt for it
            with torch.no_grad():
                quantized = roundtrip(ctx.rebuild(), ctx.kind, tuple(steps)).to(grad.dtype)
            grad_x = (grad @ quantized).to(x.dtype)
        rows, inputs = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1]).to(grad.dtype)
        grad_weight = (rows.T @ inputs).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        grad_bias = rows.sum(0).to(ctx.bias_dtype) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None, None


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


def quant_aware_terms(method, inputs: StepInputs, weight: float,
                      formats: str = "q4_0") -> Iterator[tuple[str, torch.Tensor]]:
    """The method's forget terms (names starting with "forget", yielded before any other view is read)
    once more on the model fake-quantised as each file type in `formats` (comma-separated), times `weight`
    each, as quant_<name> (one type) or quant_<type>_<name> (several). The weights stay swapped while
    each term is backpropagated (the trainer's backward runs at the yield), so recomputed activations
    (gradient checkpointing) see the same weights."""
    named = file_types(formats)
    for file_type in named:
        prefix = "quant_" if len(named) == 1 else f"quant_{file_type}_"
        yield from _terms_on(method, inputs, weight, file_type, prefix)


def _terms_on(method, inputs: StepInputs, weight: float, file_type: str,
              prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    quantizer = FakeQuantizer(inputs.model, file_type)
    again = inputs.fresh(ForgetOnlyInputs)
    again.quantizer = quantizer
    with quantizer:
        terms = method.loss_terms(again)
        try:
            for name, term in terms:
                if not name.startswith("forget"):
                    break
                yield prefix + name, weight * term
                again.release_graphs()
        except _OtherView:
            pass
        finally:
            terms.close()
