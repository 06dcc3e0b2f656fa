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

from .base import Attack, fine_tuning_steps, learning_rate_reach, learning_rates, register_attack
from .finetune import sweep, sweep_units

SPLITS = ("example", "group")


def split(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """(relearned, measured): a seeded shuffle, cut at `fraction`; the two never share an example."""
    order = list(range(len(examples)))
    random.Random(f"relearn:{seed}").shuffle(order)
    cut = _cut(fraction, len(order))
    return [examples[i] for i in order[:cut]], [examples[i] for i in order[cut:]]


def relearn_splits(examples: list, groups: list | None, fraction: float, seeds: list) -> list[tuple[list, list]]:
    """(relearned, measured) per seed: `split` of the examples, or with `groups` of the groups (a seeded share
    of the groups relearned, the other groups measured); no two seeds relearn the same items."""
    units = list(dict.fromkeys(groups)) if groups else list(range(len(examples)))
    taken, splits = set(), []
    for seed in seeds:
        relearned, measured = distinct_split(units, fraction, seed, taken)
        taken.add(frozenset(relearned))
        if groups:
            chosen = set(relearned)
            splits.append(([ex for ex, g in zip(examples, groups) if g in chosen],
                           [ex for ex, g in zip(examples, groups) if g not in chosen]))
        else:
            splits.append(([examples[i] for i in relearned], [examples[i] for i in measured]))
    return splits


def distinct_split(items: list, fraction: float, seed: int, taken=()) -> tuple[list, list]:
    """`split` at `seed`, drawn again (seed, then "seed/1", "seed/2", ...) while its relearned items are a set
    in `taken`: repeats must hold out different items, or their spread would be the training's alone (two
    TOFU authors allow two group splits, and seeds 42 and 43 happen to draw the same one). The caller keeps
    the repeats within `distinct_splits`, so a new draw exists."""
    drawn, salt = split(items, fraction, seed), 0
    while frozenset(drawn[0]) in taken:
        salt += 1
        drawn = split(items, fraction, f"{seed}/{salt}")
    return drawn


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
        learning_rate_reach("relearn"),
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
                f"use --seeds {allowed} or fewer, or " + ("forget data of more groups" if by_group else
                                                          "a larger --max-samples, if the forget set has more"))

    def run(self, context):
        options = context.options
        groups = context.groups if self.needs_groups(options) else None
        plans = [(seed, relearned, f"forget held out, seed {seed}", measured) for seed, (relearned, measured)
                 in zip(context.run_seeds(), relearn_splits(context.forget, groups, options["relearn_fraction"],
                                                            context.run_seeds()))]
        context.log(f"relearn ({options['relearn_split']} split): {options['relearn_steps']} steps on "
                    f"{len(plans[0][1])} forget examples, measured on the other {len(plans[0][3])}; "
                    f"{len(plans)} seed(s)")
        points = sweep(context, self.name, plans, options["relearn_steps"], context.retain)
        return [{"name": self.name, "split": options["relearn_split"], "trained_on": points[0]["trained_on"],
                 "steps": points[0]["steps"], "forget_set": f"forget held out ({options['relearn_split']} split)",
                 "points": points}]
