"""SURE's saliency rule (Zhang et al., ICLR 2025, "Catastrophic Failure of LLM Unlearning via
Quantization"; code zzwjames/FailureLLMUnlearning, baselines/iterative.py).

4-bit quantisation restores much of what gradient-ascent-style unlearning removed, because many small weight
updates fall inside one quantisation bin. SURE concentrates the update: at each step, every neuron (a row of
a weight matrix, or one entry of a vector) gets the L2 norm of its forget-loss gradient; only the neurons at
or above the (1 − fraction) quantile of all those norms are updated (the step's whole gradient is masked to
them), so the weights that move, move further. The authors filter at the 90th percentile (fraction 0.1).

Ours reads the forget gradient of the first micro-batch of each optimizer step (with gradient accumulation
the later micro-batches' forget gradients are not separated from their other terms); the authors' code
recomputes it on every batch."""
from __future__ import annotations

import torch


class SalientNeurons:
    """Masks each step's gradient to the neurons with the largest forget-loss gradient."""

    def __init__(self, fraction: float):
        self.fraction = fraction
        self.masks: dict[str, torch.Tensor] = {}
        self.kept = 0.0   # share of the trainable weights the last mask let through (for the log)
        self.observed = False   # this step's neurons are chosen (mask_gradients starts the next step)

    def after_backward(self, term: str, model) -> None:
        """Called after each loss term's backward: the gradient just after a step's first forget term is
        the forget-loss gradient."""
        if term.startswith("forget") and not self.observed:
            self.observe_forget_gradient(model)
            self.observed = True

    def observe_forget_gradient(self, model) -> None:
        """Choose this step's neurons from the gradients as they are now (just after the forget term)."""
        norms = {name: neuron_norms(p.grad) for name, p in model.named_parameters() if p.grad is not None}
        if not norms:
            return
        everything = torch.cat([n.flatten() for n in norms.values()]).float()
        threshold = quantile(everything, 1.0 - self.fraction)
        self.masks = {name: n >= threshold for name, n in norms.items()}
        kept = sum(int(m.sum()) * _row_size(p) for (name, p) in model.named_parameters() if name in self.masks
                   for m in [self.masks[name]])
        total = sum(p.numel() for name, p in model.named_parameters() if name in self.masks)
        self.kept = kept / max(total, 1)

    def mask_gradients(self, model) -> None:
        """Zero the gradient of every neuron not chosen (before clipping and the optimizer step); the next
        step chooses its own."""
        self.observed = False
        for name, param in model.named_parameters():
            if param.grad is None:
                continue
            mask = self.masks.get(name)
            if mask is None:
                param.grad.zero_()
            else:
                mask = _like_gradient(mask, param.grad)
                param.grad.mul_(mask.view(-1, *([1] * (param.grad.dim() - 1))).to(param.grad.dtype))


def neuron_norms(grad: torch.Tensor) -> torch.Tensor:
    """One norm per neuron: per row of a matrix (over its other dimensions), |g| of a vector's entries. A
    gradient FSDP shards by rows is gathered first: every process chooses from all neurons alike."""
    if hasattr(grad, "full_tensor"):
        grad = grad.full_tensor()
    if grad.dim() > 1:
        return grad.detach().float().flatten(1).norm(dim=1)
    return grad.detach().float().abs()


def quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile with linear interpolation, as numpy.percentile (which the authors use); kthvalue, as
    torch.quantile refuses more than 2^24 values."""
    position = q * (values.numel() - 1)
    low, high = int(position), min(int(position) + 1, values.numel() - 1)
    below, above = values.kthvalue(low + 1).values, values.kthvalue(high + 1).values
    return below + (position - low) * (above - below)


def _row_size(param: torch.Tensor) -> int:
    return param.shape[1:].numel() if param.dim() > 1 else 1


def _like_gradient(mask: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The rows of a neuron mask this process holds of an FSDP-sharded (DTensor) gradient, the mask otherwise."""
    if not hasattr(grad, "device_mesh"):
        return mask
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(mask, grad.device_mesh, grad.placements, src_data_rank=None)
