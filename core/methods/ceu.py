"""CE-U: cross-entropy unlearning (Yang et al. 2025, arXiv:2503.01224). At each answer position the target
is the model's own next-token distribution with the true token removed (its logit set to −inf, held
constant); the loss is the cross entropy to it, so the true token's probability is pushed to the others
in proportion, with a bounded gradient (unlike gradient ascent's). As in the paper's footnote and
open-unlearning's CEU.yaml, the first answer token is not trained on. Forget set only."""
from ..losses import ce_unlearning_target, soft_cross_entropy
from .base import UnlearningMethod, register
from .params import Param, forget_weight


@register
class CEU(UnlearningMethod):
    name = "ceu"
    summary = "Cross-entropy unlearning: the true token's probability moved to the model's other choices"
    paper = "Yang et al. 2025, CE-U: Cross Entropy Unlearning (arXiv:2503.01224)"
    params = (Param("ignore_first_answer_tokens", 1, "answer tokens at the start of each answer left out",
                    "open-unlearning CEU.yaml (ignore_first_n_answer_tokens)", low=0),
              forget_weight(1.0, "open-unlearning CEU (a single term)"))

    def loss_terms(self, inputs):
        logits, labels = inputs.logits("forget")
        predicting, targets = logits[:, :-1], labels[:, 1:]
        answer = targets != -100
        mask = answer & (answer.cumsum(-1) > self.params["ignore_first_answer_tokens"])
        loss = soft_cross_entropy(predicting, ce_unlearning_target(predicting, targets), mask)
        yield "forget_ceu", self.params["forget_weight"] * loss
