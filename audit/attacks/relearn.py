"""Relearning (Hu et al. 2024; Deeb & Roger 2024): fine-tune the unlearned model on part of the forget set
(default: half, 30 steps) and measure the rest, which it never saw again. Much "unlearning" comes back after
a few steps on related data; the retain figures beside it tell recovery from damage. `example` splits the
forget examples; `group` relearns some subjects (TOFU authors, or the data's `group` field) and measures
the others, so that what comes back cannot be facts shared with the relearned examples."""
from __future__ import annotations

import math
import random

from core.errors import require
from core.methods.params import Param

from .base import Attack, fine_tuning_steps, learning_rates, register_attack
from .finetune import sweep, sweep_units

SPLITS = ("example", "group")


def split(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """(relearned, measured): a seeded shuffle, cut at `fraction`; the two never share an example."""
    order = list(range(len(examples)))
    random.Random(f"relearn:{seed}").shuffle(order)
    cut = _cut(fraction, len(order))
    return [examples[i] for i in order[:cut]], [examples[i] for i in order[cut:]]


def split_by_group(examples: list, groups: list, fraction: float, seed: int) -> tuple[list, list]:
    """(relearned, measured): a seeded share of the groups relearned, the other groups measured."""
    relearned_groups, _ = split(list(dict.fromkeys(groups)), fraction, seed)
    chosen = set(relearned_groups)
    return ([ex for ex, g in zip(examples, groups) if g in chosen],
            [ex for ex, g in zip(examples, groups) if g not in chosen])


def _cut(fraction: float, count: int) -> int:
    return min(max(1, round(fraction * count)), count - 1)


def distinct_splits(count: int, fraction: float) -> int:
    """How many different splits `count` items allow at `fraction`."""
    return math.comb(count, _cut(fraction, count))


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
        learning_rates("relearn"),
        Param("relearn_split", "example", "what is held out: examples, or whole groups (subjects: TOFU authors, "
              "or the data's `group` field)", "Deeb & Roger 2024 split independent facts (group); example is "
              "the audit's first protocol", choices=SPLITS),
    )

    def needs_groups(self, options: dict) -> bool:
        return options["relearn_split"] == "group"

    def units(self, context):
        return sweep_units(context, self.name)

    def check(self, context):
        options = context.options
        by_group = self.needs_groups(options)
        units = len(set(context.groups)) if by_group else len(context.forget)
        what = "groups" if by_group else "examples"
        require(units >= 2, f"the relearn attack splits the forget set, which has {units} "
                            f"{what[:-1] if units == 1 else what}",
                "give a forget set of 2 or more examples" if not by_group else
                "give forget data of 2 or more groups, or use --relearn-split example")
        allowed = distinct_splits(units, options["relearn_fraction"])
        require(context.seeds <= allowed, f"--seeds {context.seeds}: the forget set's {units} {what} allow only "
                                          f"{allowed} different relearn splits",
                f"use --seeds {allowed} or fewer, or a larger --max-samples")

    def run(self, context):
        options = context.options
        plans = []
        for seed in context.run_seeds():
            if self.needs_groups(options):
                relearned, measured = split_by_group(context.forget, context.groups, options["relearn_fraction"], seed)
            else:
                relearned, measured = split(context.forget, options["relearn_fraction"], seed)
            plans.append((seed, relearned, f"forget held out, seed {seed}", measured))
        context.log(f"relearn ({options['relearn_split']} split): {options['relearn_steps']} steps on "
                    f"{len(plans[0][1])} forget examples, measured on the other {len(plans[0][3])}; "
                    f"{len(plans)} seed(s)")
        points = sweep(context, self.name, plans, options["relearn_steps"], context.retain)
        return [{"name": self.name, "split": options["relearn_split"], "trained_on": points[0]["trained_on"],
                 "steps": points[0]["steps"], "forget_set": f"forget held out ({options['relearn_split']} split)",
                 "points": points}]
