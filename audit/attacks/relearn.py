"""Relearning (Hu et al. 2024; Deeb & Roger 2024): fine-tune the unlearned model on part of the forget set
(default: half, 30 steps) and measure the other half, which it never saw again. Much "unlearning" comes back
after a few steps on related data; the retain figures beside it tell recovery from damage."""
from __future__ import annotations

import random

from core.errors import require
from core.methods.params import Param

from .base import ATTACK_LR, Attack, fine_tuning_steps, register_attack
from .finetune import finetuned_copy


def split(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """(relearned, measured): a seeded shuffle, cut at `fraction`; the two never share an example."""
    order = list(range(len(examples)))
    random.Random(f"relearn:{seed}").shuffle(order)
    cut = min(max(1, round(fraction * len(order))), len(order) - 1)
    return [examples[i] for i in order[:cut]], [examples[i] for i in order[cut:]]


@register_attack
class Relearn(Attack):
    name = "relearn"
    summary = "fine-tune on part of the forget set, measure the rest"
    order = 10
    params = (
        Param("relearn_fraction", 0.5, "share of the forget set relearned (the rest, at least one, is measured)",
              "Deeb & Roger 2024 relearn some facts and measure held-out ones; half and half: this project's "
              "choice (docs/audit.md)", low=0.0, high=1.0, above=True),
        fine_tuning_steps("relearn", 30, "fine-tuning steps of the relearn attack",
                          "this project's choice (docs/audit.md): a small budget, as relearning attacks use "
                          "(Hu et al. 2024); it restored 0.62-0.92 of what five methods removed "
                          "(docs/results/audit.md)"),
        ATTACK_LR,
    )

    def check(self, context):
        require(len(context.forget) >= 2, f"the relearn attack splits the forget set, which has "
                                          f"{len(context.forget)} example", "give a forget set of 2 or more examples")

    def run(self, context):
        options = context.options
        relearned, measured = split(context.forget, options["relearn_fraction"], context.config.get("seed", 42))
        context.log(f"relearn: {options['relearn_steps']} steps on {len(relearned)} forget examples, "
                    f"measured on the other {len(measured)}")
        attacked, steps = finetuned_copy(context, relearned, options["relearn_steps"], options["relearn_lr"],
                                         "relearn")
        result = {"name": self.name, "trained_on": len(relearned), "steps": steps,
                  "forget": {"set": "forget (held-out half)", **context.baseline("forget_half", measured),
                             "attacked": context.measure(attacked.model, attacked.tokenizer, measured, "relearn forget")}}
        if context.retain:
            result["retain"] = {**context.baseline("retain", context.retain),
                                "attacked": context.measure(attacked.model, attacked.tokenizer, context.retain,
                                                            "relearn retain")}
        return [result]
