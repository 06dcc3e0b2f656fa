"""Benign fine-tuning: an ordinary later fine-tune on retain data only (what a user may do downstream), then
the whole forget set measured. Unrelated training can bring back what was suppressed rather than removed."""
from __future__ import annotations

from core.errors import require

from .base import Attack, fine_tuning_steps, learning_rate_reach, learning_rates, register_attack
from .finetune import sweep, sweep_units


@register_attack
class Benign(Attack):
    name = "benign"
    summary = "fine-tune on retain data only, measure the forget set"
    order = 20
    params = (fine_tuning_steps("benign", 30, "fine-tuning steps on retain data (benign)",
                                "the relearn attack's budget, so the two compare (docs/audit.md)"),
              learning_rates("benign"), learning_rate_reach("benign"))

    def units(self, context):
        return sweep_units(context, self.name)

    def check(self, context):
        require(bool(context.retain), "the benign attack fine-tunes on the run's retain set, and this run has none",
                "audit it with --attacks relearn,quantize,rephrase, or unlearn with a --retain set")

    def run(self, context):
        steps = context.options["benign_steps"]
        context.log(f"benign: {steps} steps on {len(context.retain)} retain examples, forget set measured")
        plans = [(seed, context.retain, "forget", context.forget) for seed in context.run_seeds()]
        points = sweep(context, self.name, plans, steps, context.retain)
        return [{"name": self.name, "trained_on": len(context.retain), "steps": points[0]["steps"],
                 "forget_set": "forget", "points": points}]
