"""Supervised fine-tuning: the *learn* stage of TOFU's protocol (`unlearn finetune`), not an unlearning
method. It minimises answer NLL on the data passed as the forget view, so it shares the trainer, the run
directory, stop/resume and the summary with the unlearning methods."""
from ..losses import token_mean
from .base import UnlearningMethod, register


@register
class SupervisedFinetune(UnlearningMethod):
    name = "sft"
    summary = "Plain supervised fine-tuning on the data (TOFU's learn stage; used by `unlearn finetune`)"
    paper = "Maini et al. 2024 (TOFU): fine-tune on the QA before unlearning"
    listed = False   # not offered as an unlearning method

    def loss_terms(self, inputs):
        yield "train_nll", token_mean(*inputs.nll("forget"))
