"""NPO+SAM: NPO+RT with the forget loss taken at the worst weights within a small ball (Fan et al., ICML 2025,
"Towards LLM Unlearning Resilient to Relearning Attacks: A Sharpness-Aware Minimization Perspective and
Beyond"; code OPTML-Group/Unlearn-Smooth). A forget loss that stays low in a whole neighbourhood of θ is flat
there, and a relearning attack's few steps do not climb out of it:

    min_θ  w_f·NPO(θ + ε) + w_r·NLL_retain(θ),   ε = ρ·g/‖g‖₂,  g = ∇_θ w_f·NPO(θ)

with ‖g‖ the norm over all trained tensors together. Per micro-batch: the forget loss at θ and its gradient
g (autograd.grad: .grad is not touched), the trained weights moved by ε, the forget loss at θ + ε yielded
(the trainer's backward adds its gradient to .grad), θ put back from a copy (bit-exact: adding and then
subtracting ε would not round-trip), and the retain term at θ. Gradient accumulation sums each
micro-batch's SAM gradient; clipping and AdamW follow as for every method. Under --lora only the adapter
trains, so only the adapter moves and ρ is a radius in adapter space. The NPO term is our per-sequence NPO
(the authors' code takes NPO of the batch-mean loss, or of raw logits for MUSE, so their β do not carry over).
The forget NLL in the log is the one at θ.

Cost per step: one more forget forward and backward than NPO+RT; measured 1.63x (LoRA) and 1.52x (full)
an NPO+RT step on the demo model (docs/results/step_cost.md); memory: a copy of the trained
weights and of their forget gradient. A multi-process run is refused: it backpropagates one summed loss per
micro-batch, with no room for a gradient taken between two forwards.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ..errors import UnlearnError
from ..losses import npo_loss, sam_perturbation, sequence_nll, token_mean
from ..scoring import forward_logits
from .base import register
from .npo_rt import NPORetain
from .params import Param, beta, forget_weight, retain_weight

PAPER = "Fan et al. 2025, Towards LLM Unlearning Resilient to Relearning Attacks: a Sharpness-Aware Minimization Perspective (ICML 2025)"
SCRIPTS = "Unlearn-Smooth run_wmdp_unlearn.sh and MUSE run_muse_unlearn.sh"


class PerturbedForgetNPO(NPORetain):
    """NPO+RT whose forget term is taken at perturbed weights: what NPO+SAM and NPO+RS share. Not registered."""
    params = (beta(0.1, "NPO paper, TOFU (the authors' β is for a batch-mean NPO)"),
              forget_weight(1.0, "NPO repo npo_grad_diff"),
              retain_weight(1.0, "Unlearn-Smooth configs (gamma 1; MUSE News 1.0)"))

    one_process = ("takes a gradient between two forward passes of one micro-batch, which a multi-process run "
                   "cannot do (it backpropagates one summed loss per micro-batch)")

    def prepare(self, setup):
        refuse_several_processes(self)

    def forget_loss(self, nll: torch.Tensor, inputs) -> torch.Tensor:
        return self.params["forget_weight"] * npo_loss(nll, inputs.ref_nll("forget"), self.params["beta"])

    def forget_term(self, inputs):
        """At the current weights, through StepInputs' cache: the forget NLL the trainer logs."""
        return self.forget_loss(inputs.nll("forget")[0], inputs)

    def forget_term_uncached(self, inputs):
        """At whatever the weights are now, past the cache, so that the logged NLL stays the one at θ."""
        nll, _ = sequence_nll(*forward_logits(inputs.model, inputs.batch["forget"]))
        return self.forget_loss(nll, inputs)

    def retain_term(self, inputs):
        return self.params["retain_weight"] * token_mean(*inputs.nll("retain"))


@register
class NPOSAM(PerturbedForgetNPO):
    name = "npo_sam"
    summary = ("NPO+RT with the forget loss at the worst nearby weights (SAM): built to resist relearning; "
               "1.5-1.6x an NPO+RT step")
    paper = PAPER
    resists = "flattens the forget loss around the weights (SAM); 1.5-1.6x an NPO+RT step (measured)"
    trained_copies = 2   # the weights before the perturbation and the forget gradient
    params = PerturbedForgetNPO.params + (
        Param("rho", 0.01, "radius ρ of the weight perturbation: the forget loss is taken at θ + ρ·g/‖g‖",
              SCRIPTS + " (the JSON configs' 0.1 is not what ran)", low=0.0),)

    def loss_terms(self, inputs):
        params = trainable_parameters(inputs.model)
        grads = torch.autograd.grad(self.forget_term(inputs), params, allow_unused=True)
        inputs.release_graphs()   # the logits go; the forget NLL at θ stays for the log
        moved = [(p, g) for p, g in zip(params, grads) if g is not None]
        del grads
        params = [p for p, _ in moved]
        with weights_kept(params):
            shift(params, sam_perturbation([g for _, g in moved], self.params["rho"]))
            del moved
            yield "forget_npo_sam", self.forget_term_uncached(inputs)
        yield "retain_nll", self.retain_term(inputs)


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@contextmanager
def weights_kept(params: list[torch.nn.Parameter]):
    """Copies of `params`, put back bit for bit on leaving: normally, on an error, or when the generator
    holding this is closed before it finishes."""
    saved = [p.detach().clone() for p in params]
    try:
        yield saved
    finally:
        restore(params, saved)


@torch.no_grad()
def restore(params: list[torch.nn.Parameter], saved: list[torch.Tensor]) -> None:
    for param, copy in zip(params, saved):
        param.copy_(copy)


@torch.no_grad()
def shift(params: list[torch.nn.Parameter], steps: list[torch.Tensor]) -> None:
    for param, step in zip(params, steps):
        param.add_(step)


def refuse_several_processes(method) -> None:
    """The Python API's guard; the trainer refuses `one_process` methods before loading the model."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and \
            torch.distributed.get_world_size() > 1:
        raise UnlearnError(f"method {method.name} {method.one_process}",
                           "run it in one process (without accelerate launch), or use npo_rt")
