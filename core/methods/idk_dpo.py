"""IdkDPO: DPO with an "I don't know" answer preferred over the true forget answer, plus retain NLL
(Maini et al. 2024, TOFU's `idk` preference baseline; Rafailov et al. 2023 for DPO). Defaults are
open-unlearning's DPO: β=0.1, weights 1/1. Refusals come from TOFU's idontknow.jsonl in assets/."""
from ..losses import dpo_loss, token_mean
from .base import UnlearningMethod, register
from .params import beta, forget_weight, retain_weight


@register
class IdkDPO(UnlearningMethod):
    name = "idk_dpo"
    summary = "DPO towards 'I don't know' answers on forget questions + retain NLL: refuses instead of babbling"
    paper = "TOFU `idk` preference baseline with DPO (open-unlearning defaults: β=0.1, weights 1/1)"
    params = (beta(0.1, "open-unlearning DPO", "DPO"), forget_weight(1.0, "open-unlearning DPO"),
              retain_weight(1.0, "open-unlearning DPO"))
    views = ("forget", "idk", "retain")
    cached_reference = ("forget", "idk")

    def loss_terms(self, inputs):
        nll_idk, _ = inputs.nll("idk")
        nll_true, _ = inputs.nll("forget")
        forget = dpo_loss(nll_idk, inputs.ref_nll("idk"), nll_true, inputs.ref_nll("forget"), self.params["beta"])
        yield "forget_dpo", self.params["forget_weight"] * forget
        yield "retain_nll", self.params["retain_weight"] * token_mean(*inputs.nll("retain"))
