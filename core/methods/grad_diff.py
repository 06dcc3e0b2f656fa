"""GradDiff: gradient ascent on forget plus ordinary NLL on retain (TOFU's `grad_diff`; Liu et al. 2022).

Defaults follow open-unlearning's GradDiff: both weights 1.
"""
from ..losses import gradient_ascent_loss, token_mean
from .base import UnlearningMethod, register
from .params import forget_weight, retain_weight


@register
class GradDiff(UnlearningMethod):
    name = "grad_diff"
    summary = "Gradient ascent on forget + NLL on retain: keeps the retain answers while forgetting"
    paper = "Liu et al. 2022; TOFU baseline `grad_diff` (weights 1/1 as in open-unlearning)"
    params = (forget_weight(1.0, "open-unlearning GradDiff"), retain_weight(1.0, "open-unlearning GradDiff"))
    views = ("forget", "retain")

    def loss_terms(self, inputs):
        yield "forget_ga", self.params["forget_weight"] * gradient_ascent_loss(*inputs.nll("forget"))
        yield "retain_nll", self.params["retain_weight"] * token_mean(*inputs.nll("retain"))
