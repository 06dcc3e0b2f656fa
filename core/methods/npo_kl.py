"""NPO+KL: NPO on forget plus KL(original ‖ current) on retain (the NPO repo's `npo_KL`, weights 1/1)."""
from .base import register
from .npo import NPO
from .params import beta, forget_weight, kl_weight


@register
class NPOKL(NPO):
    name = "npo_kl"
    summary = "NPO + KL to the original model on retain"
    paper = "Zhang et al. 2024, NPO+KL (`npo_KL`: β=0.1, weights 1/1)"
    params = (beta(0.1, "NPO paper, TOFU"), forget_weight(1.0, "NPO repo npo_KL"), kl_weight(1.0, "NPO repo npo_KL"))
    renamed = {"retain_weight": "kl_weight"}   # its name before 2026-12
    views = ("forget", "retain")
    kl_views = ("retain",)

    def loss_terms(self, inputs):
        yield "forget_npo", self.forget_term(inputs)
        yield "retain_kl", self.params["kl_weight"] * inputs.kl("retain")
