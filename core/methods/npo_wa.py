"""NPO+WA: NPO+RT whose final model is the running average of its weights over the run's second half
(weight averaging, the cheapest smoothness variant of Fan et al., ICML 2025; code OPTML-Group/Unlearn-Smooth).
An average of the weights along the path lies in a flatter region than its end point, which is what makes
forgetting harder to undo by a few relearning steps (the paper's argument for SAM, at no extra step cost):

    θ̄ = (1/n)·Σ_k θ_{s + k·e},   k = 0 … n−1,

every `average_every` optimizer steps from step s = ⌈average_start · total steps⌉ on (s at least 1). The
authors average every 5 steps from step 100 of runs several hundred steps long; ours are often 50 steps, so the
start is a fraction of the run (default 0.5, ours) rather than a step number. Training itself is NPO+RT's,
unchanged: the average only replaces the trained weights when the run finishes (`final_weights`), and the
checkpoints keep the average and its count (a resumed run averages exactly what the uninterrupted one would;
a checkpoint opened as a model, e.g. by `unlearn eval`, is the average so far: core.checkpoint.METHOD_MODEL_PREFIX).
Under --lora the adapter's A and B are averaged each (the average of products B·A is not B̄·Ā: an
approximation the full fine-tuning runs do not make). Cost: no extra forward or backward; memory: one
copy of the trained weights.
"""
from __future__ import annotations

import math

import torch

from ..checkpoint import METHOD_MODEL_PREFIX, method_model_part
from .base import register
from .npo_rt import NPORetain
from .npo_sam import PAPER
from .params import Param, beta, forget_weight, retain_weight

COUNT = "average_count"


@register
class NPOWeightAverage(NPORetain):
    name = "npo_wa"
    summary = ("NPO+RT whose final model is the average of its weights over the run's second half (weight "
               "averaging): built to resist relearning; no extra cost per step")
    paper = PAPER + ", weight averaging variant"
    resists = "the final model is an average of the weights along the run; no extra cost per step"
    trained_copies = 1   # the running average
    params = (beta(0.1, "NPO paper, TOFU"), forget_weight(1.0, "NPO repo npo_grad_diff"),
              retain_weight(1.0, "Unlearn-Smooth configs (gamma 1)"),
              Param("average_every", 5, "take the weights into the average every this many optimizer steps",
                    "Unlearn-Smooth (every 5 steps)", low=1),
              Param("average_start", 0.5, "start averaging after this fraction of the run's steps",
                    "ours: the authors start at step 100 of longer runs", low=0.0, high=1.0))

    def __init__(self, params: dict):
        super().__init__(params)
        self.trained: dict[str, torch.nn.Parameter] = {}
        self.average: dict[str, torch.Tensor] = {}
        self.count = 0

    def prepare(self, setup):
        self.trained = {name: p for name, p in setup.model.named_parameters() if p.requires_grad}

    def first_averaged_step(self, total_steps: int) -> int:
        return max(1, math.ceil(self.params["average_start"] * total_steps))

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        start = self.first_averaged_step(total_steps)
        if step < start or (step - start) % self.params["average_every"]:
            return
        self.count += 1
        for name, param in self.trained.items():
            if name not in self.average:
                self.average[name] = param.detach().clone()
            else:   # the running mean: θ̄ += (θ − θ̄)/n, in the weights' own dtype
                self.average[name].add_(param.detach() - self.average[name], alpha=1.0 / self.count)

    def final_weights(self) -> dict[str, torch.Tensor] | None:
        return dict(self.average) if self.count else None   # a run too short to average keeps its weights

    def tensor_state_dict(self) -> dict[str, torch.Tensor]:
        if not self.count:
            return {}
        return {**{f"{METHOD_MODEL_PREFIX}{name}": value for name, value in self.average.items()},
                COUNT: torch.tensor(self.count)}

    def load_tensor_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        if COUNT not in tensors:
            return
        self.count = int(tensors[COUNT])
        self.average = {name: value.clone() for name, value in method_model_part(tensors).items()}
