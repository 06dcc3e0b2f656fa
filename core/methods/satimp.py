"""SatImp (Yang et al. 2025, "Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning", ICML 2025):
token-weighted gradient ascent with w_t = p_t^β1 · (1 − p_t)^β2 (held constant), "saturation" times
"importance", plus NLL on retain. Defaults: open-unlearning's configs/trainer/SatImp.yaml (its YAML sets
the forget weight gamma to 0.1 and the retain weight alpha to 1)."""
from ..losses import satimp_weights, token_mean, weighted_ascent_loss
from .base import UnlearningMethod, register
from .params import Param, forget_weight, retain_weight


@register
class SatImp(UnlearningMethod):
    name = "satimp"
    summary = "Saturation x importance token weighting of gradient ascent, + retain NLL"
    paper = "Yang et al. 2025, Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning (ICML 2025)"
    params = (Param("beta1", 5.0, "exponent of p_t (saturation) in the token weights", "open-unlearning SatImp.yaml",
                    low=0.0),
              Param("beta2", 1.0, "exponent of 1 - p_t (importance) in the token weights",
                    "open-unlearning SatImp.yaml", low=0.0),
              forget_weight(0.1, "open-unlearning SatImp.yaml (gamma)"),
              retain_weight(1.0, "open-unlearning SatImp.yaml (alpha)"))
    views = ("forget", "retain")

    def loss_terms(self, inputs):
        token_nll, mask = inputs.token_nll("forget")
        weights = satimp_weights(token_nll, self.params["beta1"], self.params["beta2"])
        yield "forget_satimp", self.params["forget_weight"] * weighted_ascent_loss(token_nll, mask, weights)
        yield "retain_nll", self.params["retain_weight"] * token_mean(*inputs.nll("retain"))
