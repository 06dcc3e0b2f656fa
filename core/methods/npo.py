"""NPO: Negative Preference Optimization (Zhang, Lin, Bai, Mei 2024, arXiv:2404.05868).

Loss -(2/β)·logσ(β·(NLL_θ − NLL_ref)) on the summed answer NLL. Unlike gradient ascent it saturates
once the forget answers are well below the reference's likelihood. β = 0.1 as in the paper's TOFU code.
The reference NLL is computed once before training and cached per example (no second model in memory).
"""
from ..losses import npo_loss
from .base import UnlearningMethod, register
from .params import beta, forget_weight


@register
class NPO(UnlearningMethod):
    name = "npo"
    summary = "Negative Preference Optimization: lowers forget likelihood below the original's, without collapse"
    paper = "Zhang et al. 2024, Negative Preference Optimization (β=0.1)"
    params = (beta(0.1, "NPO paper, TOFU"), forget_weight(1.0, "NPO paper"))
    cached_reference = ("forget",)

    def forget_term(self, inputs):
        nll, _ = inputs.nll("forget")
        return self.params["forget_weight"] * npo_loss(nll, inputs.ref_nll("forget"), self.params["beta"])

    def loss_terms(self, inputs):
        yield "forget_npo", self.forget_term(inputs)
