"""GA: gradient ascent on the forget set, the simplest baseline (Jang et al. 2023; TOFU's `grad_ascent`).

Unbounded: the forget NLL grows without limit and the model soon collapses into gibberish.
"""
from ..losses import gradient_ascent_loss
from .base import UnlearningMethod, register
from .params import forget_weight


@register
class GradientAscent(UnlearningMethod):
    name = "ga"
    summary = "Gradient ascent on the forget set: fast, unbounded, collapses the model if run long"
    paper = "Jang et al. 2023 (Knowledge Unlearning); TOFU baseline `grad_ascent`"
    params = (forget_weight(1.0, "TOFU grad_ascent"),)

    def loss_terms(self, inputs):
        yield "forget_ga", self.params["forget_weight"] * gradient_ascent_loss(*inputs.nll("forget"))
