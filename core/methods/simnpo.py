"""SimNPO (Fan et al. 2024, "Simplicity Prevails", arXiv:2410.07163): reference-free NPO on the
length-normalised NLL with margin δ, plus NLL on retain. Defaults are open-unlearning's for TOFU:
β=4.5, δ=0, forget weight (γ) 0.125, retain weight (α) 1.

|y| is the number of predicted answer tokens. On raw text (every position labelled) that is T − 1, since
position 0 has nothing before it to predict it; open-unlearning counts the labels, T, one more."""
from ..losses import simnpo_loss, token_mean
from .base import UnlearningMethod, register
from .params import Param, beta, forget_weight, retain_weight


@register
class SimNPO(UnlearningMethod):
    name = "simnpo"
    summary = "SimNPO: NPO without a reference model, on length-normalised likelihood, + retain NLL"
    paper = "Fan et al. 2024, SimNPO (open-unlearning TOFU defaults: β=4.5, δ=0, weights 0.125/1)"
    params = (beta(4.5, "open-unlearning SimNPO, TOFU", "SimNPO"),
              Param("delta", 0.0, "reward margin on the length-normalised NLL", "open-unlearning SimNPO, TOFU"),
              forget_weight(0.125, "open-unlearning SimNPO (gamma)"), retain_weight(1.0, "open-unlearning SimNPO (alpha)"))
    views = ("forget", "retain")

    def loss_terms(self, inputs):
        nll, n_tokens = inputs.nll("forget")
        forget = simnpo_loss(nll, n_tokens, self.params["beta"], self.params["delta"])
        yield "forget_simnpo", self.params["forget_weight"] * forget
        yield "retain_nll", self.params["retain_weight"] * token_mean(*inputs.nll("retain"))
