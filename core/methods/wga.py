"""WGA: weighted gradient ascent (Wang et al. 2025, "Rethinking LLM Unlearning Objectives: A Gradient
Perspective and Go Beyond", ICLR 2025). Gradient ascent where each answer token's NLL is weighted by the
model's own probability of it, p_t^β (held constant): tokens already forgotten stop pulling, which keeps
GA from running away. Plus NLL on retain. Defaults: open-unlearning's configs/trainer/WGA.yaml."""
from ..losses import token_mean, weighted_ascent_loss, wga_weights
from .base import UnlearningMethod, register
from .params import Param, forget_weight, retain_weight


@register
class WGA(UnlearningMethod):
    name = "wga"
    summary = "Weighted gradient ascent: each forget token weighted by its own probability, + retain NLL"
    paper = "Wang et al. 2025, Rethinking LLM Unlearning Objectives (ICLR 2025)"
    params = (Param("beta", 1.0, "inverse temperature of the weights p_t^beta", "open-unlearning WGA.yaml",
                    low=0.0, above=True),
              forget_weight(1.0, "open-unlearning WGA.yaml (gamma)"),
              retain_weight(1.0, "open-unlearning WGA.yaml (alpha)"))
    views = ("forget", "retain")

    def loss_terms(self, inputs):
        token_nll, mask = inputs.token_nll("forget")
        weights = wga_weights(token_nll, self.params["beta"])
        yield "forget_wga", self.params["forget_weight"] * weighted_ascent_loss(token_nll, mask, weights)
        yield "retain_nll", self.params["retain_weight"] * token_mean(*inputs.nll("retain"))
