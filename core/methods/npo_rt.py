"""NPO+RT: NPO on forget plus NLL on retain ("retain term"; the NPO repo's `npo_grad_diff`, weights 1/1)."""
from ..losses import token_mean
from .base import register
from .npo import NPO
from .params import beta, forget_weight, retain_weight


@register
class NPORetain(NPO):
    name = "npo_rt"
    summary = "NPO + NLL on retain: the NPO paper's best TOFU trade-off"
    paper = "Zhang et al. 2024, NPO+RT (`npo_grad_diff`: β=0.1, weights 1/1)"
    params = (beta(0.1, "NPO paper, TOFU"), forget_weight(1.0, "NPO repo npo_grad_diff"),
              retain_weight(1.0, "NPO repo npo_grad_diff"))
    views = ("forget", "retain")

    def loss_terms(self, inputs):
        yield "forget_npo", self.forget_term(inputs)
        yield "retain_nll", self.params["retain_weight"] * token_mean(*inputs.nll("retain"))
