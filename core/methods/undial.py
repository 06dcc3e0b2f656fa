"""UNDIAL (Dong et al. 2024, "UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in Large
Language Models", NAACL 2025). The current model is distilled towards the original model's distribution
with the true token's logit lowered by β: a fixed, bounded target instead of an unbounded ascent.
Defaults: open-unlearning's configs/trainer/UNDIAL.yaml (β 10, retain weight 0: no retain term unless
asked; its runs use lr 1e-4 for 10 epochs).

Ours averages the distillation loss over answer positions; open-unlearning's averages over every position
(prompt and padding too, where its one-hot mask of label −100 lands on an arbitrary token)."""
from ..losses import IGNORE_INDEX, soft_cross_entropy, token_mean, undial_target
from .base import UnlearningMethod, register
from .params import Param, forget_weight, retain_weight


@register
class UNDIAL(UnlearningMethod):
    name = "undial"
    summary = "Self-distillation towards the original with the true token's logit lowered (bounded, robust)"
    paper = "Dong et al. 2024, UNDIAL: Self-Distillation with Adjusted Logits (NAACL 2025)"
    params = (Param("beta", 10.0, "how far the true token's logit is lowered in the target",
                    "open-unlearning UNDIAL.yaml", low=0.0, above=True),
              forget_weight(1.0, "open-unlearning UNDIAL.yaml (gamma)"),
              retain_weight(0.0, "open-unlearning UNDIAL.yaml (alpha)"))
    reads_original = True

    def __init__(self, params: dict):
        super().__init__(params)
        self.views = ("forget", "retain") if params["retain_weight"] > 0 else ("forget",)

    def loss_terms(self, inputs):
        logits, labels = inputs.logits("forget")
        original = inputs.original_logits("forget")
        targets = labels[:, 1:]
        target = undial_target(original[:, :-1], targets, self.params["beta"])
        yield "forget_undial", self.params["forget_weight"] * soft_cross_entropy(logits[:, :-1], target,
                                                                                 targets != IGNORE_INDEX)
        if self.params["retain_weight"] > 0:
            yield "retain_nll", self.params["retain_weight"] * token_mean(*inputs.nll("retain"))
