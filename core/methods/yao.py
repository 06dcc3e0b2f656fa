"""Yao, Xu, Liu 2023, "Large Language Model Unlearning" (arXiv:2310.10683; code kevinyaobytedance/llm_unlearn).

Per step: 0.5·gradient ascent on the harmful (forget) answers + 1·NLL of K=5 random normal answers
placed after the forget prompts ("random mismatch", so the model answers something harmless) +
1·KL(original ‖ current) on normal data. The normal set defaults to the retain set. As in the paper's
code (`unlearn_harm.py`), training ends early once the harmful answers' NLL exceeds `max_bad_loss` (100):
past that point the forget answers are already unlikely and further ascent only costs utility.
"""
from ..losses import gradient_ascent_loss, token_mean
from .base import UnlearningMethod, register
from .params import Param, forget_weight, kl_weight


@register
class Yao(UnlearningMethod):
    name = "yao"
    summary = "Yao et al. 2023: gradient ascent + random mismatched answers + KL to the original on normal data"
    paper = "Yao et al. 2023, Large Language Model Unlearning (weights 0.5/1/1, K=5)"
    params = (forget_weight(0.5, "Yao et al. unlearn_harm.py"),
              Param("mismatch_weight", 1.0, "weight of the NLL of random normal answers after forget prompts",
                    "Yao et al. unlearn_harm.py", low=0.0),
              kl_weight(1.0, "Yao et al. unlearn_harm.py", on="normal"),
              Param("mismatch_k", 5, "random normal answers per forget prompt", "Yao et al. unlearn_harm.py", low=1),
              Param("max_forget_loss", 100.0, "stop once a step's forget NLL exceeds this (max_bad_loss)",
                    "Yao et al. unlearn_harm.py", low=0.0, above=True))
    renamed = {"retain_weight": "kl_weight"}   # its name before 2026-12
    views = ("forget", "mismatch", "normal")
    kl_views = ("normal",)

    def loss_terms(self, inputs):
        yield "forget_ga", self.params["forget_weight"] * gradient_ascent_loss(*inputs.nll("forget"))
        yield "mismatch_nll", self.params["mismatch_weight"] * token_mean(*inputs.nll("mismatch"))
        yield "normal_kl", self.params["kl_weight"] * inputs.kl("normal")

    def early_stop(self, forget_nll):
        limit = self.params["max_forget_loss"]
        if forget_nll > limit:
            return f"forget NLL {forget_nll:.1f} passed max_forget_loss {limit:g} (Yao et al.'s early stop)"
        return None
