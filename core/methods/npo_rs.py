"""NPO+RS: NPO+RT with the forget loss averaged over random weight perturbations ("randomized smoothing",
Fan et al., ICML 2025, the cheap variant of NPO+SAM; code OPTML-Group/Unlearn-Smooth, RSTrainer):

    min_θ  (1/k)·Σ_j w_f·NPO(θ + z_j) + w_r·NLL_retain(θ),   z_j ~ N(0, σ²·I)

σ is absolute (the same for every weight, not scaled by its size), as in the authors' code; k = 3 there.
Per micro-batch: for each j the trained weights move by z_j, the forget loss there is yielded (the trainer's
backward adds its gradient, divided by k), and θ is put back from a copy (bit-exact) before the next draw and
before the retain term, which is taken at θ. No forget loss is taken at θ itself; the trainer forwards it
once more without gradient for the log. Unlike the authors' code, the step is clipped like every other
method's and gradient accumulation works.

The noise comes from a generator seeded by the run's seed and a count of micro-batches, saved in every
checkpoint: a resumed run draws what the uninterrupted one would have. Cost per step with k = 3: three
forget forward+backward passes instead of one, plus a no-grad forward for the log: measured 2.66x (LoRA) and
2.50x (full) an NPO+RT step on the demo model (docs/results/step_cost.md); memory: a copy of the trained
weights. A multi-process run is refused, as for NPO+SAM.
"""
from __future__ import annotations

import torch

from .base import register
from .npo_sam import PAPER, PerturbedForgetNPO, restore, trainable_parameters, weights_kept
from .params import Param

RS_CODE = "Unlearn-Smooth WMDP base.py RSTrainer"


@register
class NPORS(PerturbedForgetNPO):
    name = "npo_rs"
    summary = ("NPO+RT with the forget loss averaged over Gaussian weight noise (random smoothing): built to "
               "resist relearning; 2.5-2.7x an NPO+RT step")
    paper = PAPER + ", randomized smoothing variant"
    resists = "the forget loss averaged over random weight noise; 2.5-2.7x an NPO+RT step (measured)"
    trained_copies = 1   # the weights before the noise
    params = PerturbedForgetNPO.params + (
        Param("noise_std", 1e-4, "σ of the Gaussian noise added to every trained weight (absolute)",
              "Unlearn-Smooth run_wmdp_unlearn.sh (NPO+RS.json's 0.1 is not what ran)", low=0.0),
        Param("noise_samples", 3, "noise draws k the forget loss is averaged over (one forward+backward each)",
              RS_CODE + " (n_samples)", low=1))

    def __init__(self, params: dict):
        super().__init__(params)
        self.seed = 0
        self.draws = 0   # micro-batches seen: with the seed, it fixes the next noise

    def prepare(self, setup):
        super().prepare(setup)
        self.seed = setup.config.seed

    def loss_terms(self, inputs):
        params = trainable_parameters(inputs.model)
        samples = self.params["noise_samples"]
        generator = torch.Generator(params[0].device).manual_seed(noise_seed(self.seed, self.draws))
        self.draws += 1
        with weights_kept(params) as saved:
            for sample in range(1, samples + 1):
                add_noise(params, self.params["noise_std"], generator)
                yield f"forget_npo_rs{sample}", self.forget_term_uncached(inputs) / samples
                restore(params, saved)
        yield "retain_nll", self.retain_term(inputs)

    def state_dict(self) -> dict:
        return {"noise_draws": self.draws}

    def load_state_dict(self, state: dict) -> None:
        self.draws = state.get("noise_draws", 0)


def noise_seed(seed: int, draw: int) -> int:
    """One seed per (run seed, micro-batch), far apart for neighbouring draws."""
    return (seed * 1_000_003 + draw * 7_919) % (2 ** 63)


@torch.no_grad()
def add_noise(params: list[torch.nn.Parameter], std: float, generator: torch.Generator) -> None:
    for param in params:
        param.add_(torch.randn(param.shape, generator=generator, device=param.device, dtype=param.dtype), alpha=std)
