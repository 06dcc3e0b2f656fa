"""UNDO: Unlearn, Noise, Distill on Outputs (Lee et al., NeurIPS 2025, "Distillation Robustifies Unlearning";
code AddieFoote/distillation-robustify-unlearning). A second stage, run on a model that has already unlearned
(`--model` an unlearned run's model folder): that model is the teacher, kept frozen as the run's original, and
the model being trained (the student) starts as the teacher damaged toward noise,

    W_S = (1 − α)·W_T + α·β·N      for every weight matrix (N Xavier-uniform),
    W_S = (1 − α)·W_T              for every vector (norms, biases),

then learns the teacher's next-token distributions back by forward KL(p_T ‖ p_S), averaged over every position
whose next token is real (prompt and answer; padding skipped) of the forget and retain examples. Distillation
passes on what the teacher *does*, not the latent knowledge its weights still hold, and the damage removes that
latent knowledge: the paper finds the student relearns no faster than a model that never learned the data, at
60-80 % of the compute of training one. α sets how much is destroyed, and so how much must be repaired.

Ours against the authors': they distil on a pretraining corpus mixed with forget-domain text for up to 3e8
tokens and stop once the student's retain cross-entropy is within 5 % of the teacher's; here the corpus is the
run's forget and retain sets for the run's steps (a few hundred QA pairs on a CPU), so α must be small enough to
repair on it: the default 0.1 is the bottom of their language-task range, β 0.1 and the learning rate 9e-4
are theirs. The damage is applied once, just before the first step (after the run's "before" scores, which are
the teacher's); a resumed run takes the student from its checkpoint and never damages it again.
Full fine-tuning only: under --lora the frozen base is the teacher, and damaging it would damage both.
Cost per step: one forward of the teacher and a forward and backward of the student over every position of two
views (NPO+RT: a student forward and backward over the answers, its reference cached); memory: the teacher's
copy of the weights. Measured: 1.76x an NPO+RT step in full fine-tuning on the demo model (docs/results/step_cost.md).
"""
from __future__ import annotations

import torch

from ..errors import require
from .base import UnlearningMethod, register
from .params import Param

PAPER = "Lee et al., NeurIPS 2025 (Distillation Robustifies Unlearning)"


@register
class UNDO(UnlearningMethod):
    name = "undo"
    summary = ("second stage on an unlearned model: damage a copy toward noise, then distil the unlearned model's "
               "outputs into it (forward KL on forget and retain text); built to survive relearning, a teacher "
               "forward per step (1.8x an NPO+RT step) and the teacher's copy")
    paper = PAPER
    resists = ("the student never held the latent knowledge the unlearned weights keep: it learns only their "
               "outputs, after noise destroyed the rest; 1.8x an NPO+RT step (measured) plus the teacher's copy")
    params = (Param("noise_alpha", 0.1, "α: how far the student starts from the teacher toward noise "
                    "(W ← (1 − α)W + αβN)", "the paper's language-task range 0.1-0.8 (ours: its low end, as the "
                    "repair here has only the run's examples)", low=0.0, high=1.0),
              Param("noise_beta", 0.1, "β: the scale of the Xavier-uniform noise N", "the paper's language task",
                    low=0.0, high=1.0),
              Param("retain_weight", 1.0, "weight of the distillation on the retain examples (the forget "
                    "examples' is 1)", "ours: the authors interleave their corpora"))
    views = ("forget", "retain")
    reads_original = True        # the teacher: the model the run starts from, kept frozen
    second_stage = True          # its model has already unlearned: "does it know the forget set?" would warn
    default_lr = 9e-4            # the paper's language-task distillation rate
    one_process = "damages the student's weights once before its first step, which the processes would each do"

    def __init__(self, params: dict):
        super().__init__(params)
        self.damaged = False
        self.student: torch.nn.Module | None = None
        self.seed = 0

    def prepare(self, setup):
        require(not setup.config.lora, "method undo damages every weight of the model it trains, and under --lora "
                "the base it would damage is also its teacher", "drop --lora: UNDO trains the whole model")
        self.student, self.seed = setup.model, setup.config.seed

    def loss_terms(self, inputs):
        if not self.damaged:   # once, before the first forward: the optimizer has no state to spoil yet
            damage(self.student, self.params["noise_alpha"], self.params["noise_beta"], self.seed)
            self.damaged = True
        yield "forget_distil", inputs.distillation_kl("forget")
        yield "retain_distil", self.params["retain_weight"] * inputs.distillation_kl("retain")

    def state_dict(self) -> dict:
        return {"damaged": self.damaged}

    def load_state_dict(self, state: dict) -> None:
        self.damaged = bool(state.get("damaged", False))


@torch.no_grad()
def damage(model: torch.nn.Module, alpha: float, beta: float, seed: int) -> None:
    """Shrink every trained weight by (1 − α) and add α·β·N to each matrix, N Xavier-uniform drawn from a
    generator seeded with `seed` (the same noise on every machine for one seed)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for param in model.parameters():
        if not param.requires_grad:
            continue
        noise = xavier_uniform(param.shape, generator) if param.ndim == 2 else None
        param.mul_(1 - alpha)
        if noise is not None:
            param.add_(noise.to(param.device, param.dtype), alpha=alpha * beta)


def xavier_uniform(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """U(−a, a) with a = √(6 / (fan_in + fan_out)) (Glorot & Bengio 2010), for a [fan_out, fan_in] matrix."""
    fan_out, fan_in = shape
    bound = (6.0 / (fan_in + fan_out)) ** 0.5
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound
