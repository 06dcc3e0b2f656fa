"""GA+KL: gradient ascent on forget plus KL(original ‖ current) on retain (TOFU's `KL` baseline)."""
from ..losses import gradient_ascent_loss
from .base import UnlearningMethod, register
from .params import forget_weight, kl_weight


@register
class GradientAscentKL(UnlearningMethod):
    name = "ga_kl"
    summary = "Gradient ascent on forget + KL to the original model on retain"
    paper = "TOFU baseline `KL` (Maini et al. 2024); weights 1/1"
    params = (forget_weight(1.0, "TOFU KL baseline"), kl_weight(1.0, "TOFU KL baseline"))
    renamed = {"retain_weight": "kl_weight"}   # its name before 2026-12
    views = ("forget", "retain")
    kl_views = ("retain",)

    def loss_terms(self, inputs):
        yield "forget_ga", self.params["forget_weight"] * gradient_ascent_loss(*inputs.nll("forget"))
        yield "retain_kl", self.params["kl_weight"] * inputs.kl("retain")
