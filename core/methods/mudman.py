"""MUDMAN: meta-unlearning with disruption masking and normalisation (Sondej et al. 2025, "Robust LLM
Unlearning with MUDMAN", arXiv:2506.12484; code filyp/MUDMAN @36241eb,
src/unlearning_methods/surgical_irreversible_unlearning.py). Built to survive relearning.

MUDMAN is an optimizer, not a loss (own_update): AdamW's per-coordinate scaling and momentum would undo its
mask and normalisation. Each optimizer step ("loop"), with θ the trained weights:

1. every F steps the adversary forks: θ_adv <- θ;
2. retain: a <- μ·a + (1-μ)·∇CE_retain(θ); θ <- θ - r·a (a: the retain gradient's running mean);
3. the adversary relearns: θ_adv <- d·(θ_adv - α·∇CE_forget(θ_adv)) + (1-d)·θ (decays toward the new θ);
4. the unlearning gradient g = ∇ℓ_u at the adversary's weights (before its step 3, from the same forward);
5. disruption mask: keep g_i only where sign(g_i) = sign(a_i): never against retaining, to first order;
6. normalise: g <- g·√N/‖g‖, N the number of trained scalars, ‖g‖ taken before masking; θ <- θ - η·g.

η is --lr (it follows the run's warm-up and decay; warm-up and decay are ours, the authors' rates are
constant). Only mlp.gate_proj trains, as in the authors' configs (under --lora: its adapter, so
--lora-targets must include gate_proj). ℓ_u: negative cross-entropy (paper configs) or negative entropy (the
package's example). The authors choose every rate per setup by Optuna (500 trials) and publish ranges and an
example, not the chosen values: defaults marked "example" come from src/MUDMAN.py's signature, those marked
"ours" are picked inside the published ranges.

Cost: a retain forward and backward, an adversary forward on forget and one backward (two with negative
entropy), plus the trainer's forget forward for the log: measured 1.32x an NPO+RT step under LoRA and 0.89x in full
fine-tuning, where only mlp.gate_proj trains (docs/results/step_cost.md); memory: one more copy of
the model (the adversary, saved in checkpoints) and the retain running mean of the trained weights.
"""
from __future__ import annotations

import math

import torch

from ..errors import require
from ..losses import IGNORE_INDEX, sequence_nll, token_mean
from ..scoring import forward_logits
from .base import ExtraWeights, UnlearningMethod, register
from .params import Param

CODE = "filyp/MUDMAN @36241eb"
CONFIGS = CODE + " configs/ablations_and_loss2,smol,pile-bio.yaml"
EXAMPLE = CODE + " src/MUDMAN.py example"
UNLEARNING_LOSSES = ("neg_cross_entropy", "neg_entropy")


@register
class MUDMAN(UnlearningMethod):
    name = "mudman"
    summary = ("Meta-unlearning against a relearning adversary, masked to the retain gradient's sign and "
               "normalised; built to survive relearning (0.9-1.3x an NPO+RT step, +1 model copy)")
    paper = ("Sondej et al. 2025, Robust LLM Unlearning with MUDMAN: Meta-Unlearning with Disruption Masking "
             "and Normalization (arXiv:2506.12484); --lr is the unlearning step η (default 1e-3: ours, "
             "√N-normalised, inside the authors' Optuna range 1e-7-0.3; 3e-3 raised the demo model's retain "
             "NLL from 0.007 to 0.97 within 5 steps)")
    params = (Param("retaining_rate", 1e-3, "r: SGD step of the retain running mean", EXAMPLE + " (range 1e-4-1e-2)",
                    low=0.0),
              Param("retain_momentum", 0.9, "μ: decay of the retain gradient's running mean", EXAMPLE
                    + " (range 0-0.99)", low=0.0, high=0.999),
              Param("adv_lr", 1e-3, "α: the adversary's SGD step on forget cross-entropy", EXAMPLE
                    + " (range 3e-4-0.1)", low=0.0),
              Param("adv_decay", 0.9, "d: the adversary keeps d of itself and moves 1-d toward the weights each "
                    "step (1: no decay)", "ours, inside " + CONFIGS + " range 0.3-1 (the example has none)",
                    low=0.0, high=1.0),
              Param("fork_every", 32, "F: the adversary restarts from the weights every F steps", EXAMPLE
                    + " (range 6-42)", low=1),
              Param("unlearning_loss", "neg_cross_entropy", "ℓ_u, minimised at the adversary's weights", CONFIGS,
                    choices=UNLEARNING_LOSSES),
              Param("train_modules", "mlp.gate_proj", "module, inside each layer, whose weights train", CONFIGS
                    + " (target_modules: gate_proj)"))
    resists = ("unlearns at the weights of an adversary that relearns the forget set; 0.9-1.3x an NPO+RT step "
               "(measured) and one more copy of the model")
    trained_copies = 3   # the retain gradient's mean, the adversary's two gathered gradients (its modules: at most all)
    views = ("forget", "retain")
    own_update = True
    default_lr = 1e-3
    extra_weights = (ExtraWeights("adversary", "current", trainable=True, saved=True,
                                  help="relearns the forget set; the unlearning gradient is taken at its weights"),)

    def __init__(self, params: dict):
        super().__init__(params)
        self.loops = 0          # optimizer steps done: the adversary forks when it is a multiple of F
        self.log_values: dict = {}

    def prepare(self, setup):
        module = self.params["train_modules"]
        self.trained = train_only_matching(setup.model, module, setup.config.lora)
        self.adversary = train_only_matching(setup.weights["adversary"], module, setup.config.lora)
        self.retain_mean = {name: torch.zeros_like(p) for name, p in self.trained.items()}
        self._clear_gathered()
        setup.log(f"mudman: {module} trains ({sum(p.numel() for p in self.trained.values())} weights)")

    def _clear_gathered(self) -> None:
        self.micro_batches = 0
        self.adversary_grad = {name: torch.zeros_like(p) for name, p in self.adversary.items()}
        self.unlearning_grad = {name: torch.zeros_like(p) for name, p in self.adversary.items()}
        self.adversary_nll: list[float] = []

    # ------------------------------------------------------------ per micro-batch: gather gradients
    def loss_terms(self, inputs):
        if self.micro_batches == 0 and self.loops % self.params["fork_every"] == 0:
            self._fork()
        self._gather_adversary_gradients(inputs)
        yield "retain_nll", token_mean(*inputs.nll("retain"))   # the trainer's backward: its .grad is ∇CE_retain

    @torch.no_grad()
    def _fork(self) -> None:
        for name, weight in self.trained.items():
            self.adversary[name].copy_(weight)

    def _gather_adversary_gradients(self, inputs) -> None:
        """From one forward of the adversary on the forget batch: its relearning gradient ∇CE and the
        unlearning gradient ∇ℓ_u, both at its weights before it steps (summed over the step's micro-batches)."""
        logits, labels = forward_logits(inputs.weights("adversary"), inputs.batch["forget"])
        relearn = token_mean(*sequence_nll(logits, labels))
        weights = list(self.adversary.values())
        neg_entropy = self.params["unlearning_loss"] == "neg_entropy"
        relearn_grad = torch.autograd.grad(relearn, weights, retain_graph=neg_entropy)
        unlearn_grad = (torch.autograd.grad(-answer_entropy(logits, labels), weights) if neg_entropy
                        else [-g for g in relearn_grad])   # ℓ_u = -CE: the same gradient, negated
        for name, g_adv, g_u in zip(self.adversary, relearn_grad, unlearn_grad):
            self.adversary_grad[name] += g_adv
            self.unlearning_grad[name] += g_u
        self.adversary_nll.append(float(relearn.detach()))
        self.micro_batches += 1

    # ------------------------------------------------------------ per optimizer step: the update
    def update(self, params, lr, step):
        p, n = self.params, max(self.micro_batches, 1)
        for name, weight in params.items():                       # 2. retain step with the running mean
            grad = weight.grad if weight.grad is not None else torch.zeros_like(weight)
            self.retain_mean[name].mul_(p["retain_momentum"]).add_(grad, alpha=1 - p["retain_momentum"])
            weight.sub_(self.retain_mean[name], alpha=p["retaining_rate"])
        for name, adversary in self.adversary.items():            # 3. relearn, then decay toward the weights
            adversary.sub_(self.adversary_grad[name] / n, alpha=p["adv_lr"])
            adversary.mul_(p["adv_decay"]).add_(params[name], alpha=1 - p["adv_decay"])
        unlearning = {name: g / n for name, g in self.unlearning_grad.items()}
        direction, kept, norm = masked_and_normalised(unlearning, self.retain_mean)   # 4-6.
        for name, weight in params.items():
            weight.sub_(direction[name], alpha=lr)
        self.log_values = {"adversary_forget_nll": round(sum(self.adversary_nll) / n, 6),
                           "mask_kept": round(kept, 5), "unlearning_grad_norm": round(norm, 6)}
        self.loops = step
        self._clear_gathered()

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"loops": self.loops}

    def load_state_dict(self, state: dict) -> None:
        self.loops = state.get("loops", 0)

    def tensor_state_dict(self) -> dict:
        return {f"retain_mean.{name}": t for name, t in self.retain_mean.items()}

    def load_tensor_state_dict(self, tensors: dict) -> None:
        expected = set(self.tensor_state_dict())
        require(set(tensors) == expected, "the checkpoint's mudman state does not match this run's trained weights",
                "resume with the settings the run was started with (they are in its config.json)")
        for name in self.retain_mean:
            self.retain_mean[name].copy_(tensors[f"retain_mean.{name}"])

    def extra_log(self) -> dict:
        return dict(self.log_values)


def masked_and_normalised(grads: dict[str, torch.Tensor], retain_mean: dict[str, torch.Tensor]):
    """MUDMAN's step direction: each gradient kept only where its sign agrees with the retain running mean's,
    scaled by √N/‖g‖ (N scalars; the norm of the whole gradient, before masking). Returns the direction,
    the share of coordinates kept and ‖g‖."""
    norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads.values()))
    count = sum(g.numel() for g in grads.values())
    scale = math.sqrt(count) / norm if norm > 0 else 0.0
    masks = {name: torch.sign(g) == torch.sign(retain_mean[name]) for name, g in grads.items()}
    kept = sum(int(m.sum()) for m in masks.values()) / max(count, 1)
    return {name: g * masks[name] * scale for name, g in grads.items()}, kept, norm


def answer_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean entropy of the next-token distribution at the positions that predict answer tokens."""
    predicts = labels[:, 1:] != IGNORE_INDEX
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return (entropy * predicts).sum() / predicts.sum().clamp(min=1)


def train_only_matching(model, module: str, lora: bool) -> dict[str, torch.nn.Parameter]:
    """Freeze every parameter outside the modules named `module` (e.g. mlp.gate_proj, in every layer; under
    LoRA their adapters); returns the ones left trainable, by name."""
    marker = f".{module.strip('.')}."
    trained = {name: p for name, p in model.named_parameters() if p.requires_grad and marker in f".{name}"}
    where = ("add it to --lora-targets (e.g. --lora-targets gate_proj)" if lora
             else "use a module of this model's layers, e.g. --train-modules mlp.gate_proj")
    require(bool(trained), f"mudman's train_modules {module!r} holds no trainable weight in this model", where)
    for name, p in model.named_parameters():
        if name not in trained:
            p.requires_grad_(False)
    return trained
