"""Benign fine-tuning: an ordinary later fine-tune on retain data only (what a user may do downstream), then
the whole forget set measured. Unrelated training can bring back what was suppressed rather than removed."""
from __future__ import annotations

from core.errors import require

from .base import ATTACK_LR, Attack, fine_tuning_steps, register_attack
from .finetune import finetuned_copy


@register_attack
class Benign(Attack):
    name = "benign"
    summary = "fine-tune on retain data only, measure the forget set"
    order = 20
    params = (fine_tuning_steps("benign", 30, "fine-tuning steps on retain data (benign)",
                                "the relearn attack's budget, so the two compare (docs/audit.md)"),
              ATTACK_LR)

    def check(self, context):
        require(bool(context.retain), "the benign attack fine-tunes on the run's retain set, and this run has none",
                "audit it with --attacks relearn,quantize,rephrase, or unlearn with a --retain set")

    def run(self, context):
        steps = context.options["benign_steps"]
        context.log(f"benign: {steps} steps on {len(context.retain)} retain examples, forget set measured")
        attacked, done = finetuned_copy(context, context.retain, steps, context.options[ATTACK_LR.name], "benign")
        return [{"name": self.name, "trained_on": len(context.retain), "steps": done,
                 "forget": {"set": "forget", **context.baseline("forget", context.forget),
                            "attacked": context.measure(attacked.model, attacked.tokenizer, context.forget,
                                                        "benign forget")},
                 "retain": {**context.baseline("retain", context.retain),
                            "attacked": context.measure(attacked.model, attacked.tokenizer, context.retain,
                                                        "benign retain")}}]
