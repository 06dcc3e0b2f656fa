"""benchmarks/robust.py's protocol: the rows (`Variant`: a method, maybe with a switch, and its three learning
rates), the plan each learning rate is recorded under, the issue's goal, and the choice of one (learning rate,
epoch) per method. The stages are in robust.py, the report in robust_report.py."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace

from benchmarks.ledger import Ledger
from benchmarks.tofu_claims import best_point
from benchmarks.tofu_plans import Plan, forget50_plans

PROTOCOL_LR = 5e-5                # the forget-50 % protocol's unlearning rate (tofu_plans.forget50_plans)
SHARED = (2.5e-5, 5e-5, 1e-4)     # x0.5, x1, x2 of the protocol's 5e-5
HIGHER = (5e-5, 1e-4, 2e-4)       # for the methods that hardly moved at 5e-5
# The attacker's learning rates, the same for every method: x0.3, x1 and x3 of the protocol's 5e-5. Not the
# audit's default (x0.3, x1, x3 of the run's own rate): MUDMAN's own rate is its update's step size (1e-3), and
# a method swept to 2e-4 would face a stronger attacker than one at 2.5e-5. One grid also lets the control be
# fine-tuned once for the whole table (--control-cache).
ATTACK_LRS = "1.5e-05,5e-05,0.00015"
# Both splits relearn half: 20 forget answers by example (10 relearned, 10 measured, as the first audit; 3 seeds),
# or all 40 by author: one author's 20 relearned, the other's 20 measured (two authors allow two group splits,
# so 2 seeds: each author relearned once; all 40 because with 10 measured answers the interval of NPO+RT's
# group residual, [-0.10, 0.28], was too wide to call against the goal's 0.25). The learning rates are
# tried on the first seed and the repeats run at the attacker's best (--seeds-at worst): 14 fine-tunings of
# the unlearned model per method instead of 24, ~45 min less on this CPU.
# Where the attacker does best at the grid's top (or bottom) rate, the sweep reaches up to two steps further
# (x3: 4.5e-4, then 1.35e-3): at three rates the group split's and the benign attack's worst case was the
# highest rate on every row. Scored in fp32 on every machine (the audit's default, auto, takes bf16 where the
# CPU has it: one table, one precision).
REACH = 2
# "judged": the rule a recorded audit was judged by; a record judged by another is judged again from its
# audit.json, and a sweep whose attacker's best moves under the new rule gets only its missing points measured
# (the repeats at the new best rate, the reach past it): the verdict among the rates measured with every seed,
# verdicts ordered by how far up their evidence reaches (audit/recovery.py)
AUDIT = {"seeds_at": "worst", "dtype": "float32", "judged": "rates with every seed; evidence reaching highest",
         "options": {"relearn_lr": ATTACK_LRS, "benign_lr": ATTACK_LRS, "relearn_lr_extend": REACH,
                     "benign_lr_extend": REACH},
         "splits": {"example": {"max_samples": 20, "seeds": 3, "attacks": None},
                    "group": {"max_samples": 40, "seeds": 2, "attacks": ["relearn"]}}}
GOAL = {"residual": 0.25, "quantized": 0.10, "fq": 0.1, "mu_ratio": 0.9}


@dataclass(frozen=True)
class Variant:
    key: str                       # its name in the record and the report
    label: str
    method: str
    lrs: tuple[float, ...] = SHARED
    settings: dict = field(default_factory=dict)   # more UnlearnConfig fields (a switch such as quant_aware)
    robust: bool = False           # built to survive relearning or 4-bit
    after: str | None = None       # a second stage: starts from this row's chosen checkpoint, not the target
    final_only: bool = False       # only the run's final model is evaluated (and so chosen)

    def epochs(self, points: list[dict]) -> list[dict]:
        """The points the best-checkpoint rule may choose: every epoch's (epoch 0, the target, excluded), or
        only the final model's where that is the only one the method makes."""
        return points[-1:] if self.final_only else points[1:]


# In the order they are measured: NPO+RT (the baseline every cost is relative to), then the new methods.
VARIANTS = (
    Variant("npo_rt", "NPO+RT", "npo_rt"),
    # UNDO distils NPO+RT's chosen model into a damaged copy of it (α 0.1): the paper's distillation rate 9e-4
    # and two lower, as the repair here sees only the run's examples. Measured right after NPO+RT: its paper
    # finds it the most robust to relearning, so its row is the one most likely to answer the goal
    Variant("undo", "NPO+RT, then UNDO", "undo", lrs=(1e-4, 3e-4, 9e-4), robust=True, after="npo_rt"),
    Variant("npo_sam", "NPO+SAM", "npo_sam", robust=True),
    # NPO+WA's model is the average it takes over the run's second half, written when the run ends: an earlier
    # epoch is neither that average nor what a shorter run would average, so only its final model is NPO+WA
    Variant("npo_wa", "NPO+WA", "npo_wa", robust=True, final_only=True),
    Variant("mudman", "MUDMAN", "mudman", lrs=(3e-4, 1e-3, 3e-3), robust=True),
    Variant("npo_rt_qa", "NPO+RT + quant-aware", "npo_rt", settings={"quant_aware": 1.0}, robust=True),
    # the same term against llama.cpp's q4_k_m file as it stores each weight (on this model mostly q5_0): the
    # q4_0 term left q4_k_m's recovery at 0.18. Swept a step higher, as the q4_0 term chose its top rate, 1e-4
    Variant("npo_rt_qa_km", "NPO+RT + quant-aware (q4_k_m)", "npo_rt", lrs=HIGHER,
            settings={"quant_aware": 1.0, "quant_aware_format": "q4_k_m"}, robust=True),
    Variant("npo_rs", "NPO+RS", "npo_rs", robust=True),
    Variant("npo", "NPO", "npo"),
    Variant("simnpo", "SimNPO", "simnpo", lrs=HIGHER),
    Variant("rmu", "RMU", "rmu", lrs=HIGHER),
    Variant("sure", "SURE", "sure", lrs=HIGHER),
    Variant("undial", "UNDIAL", "undial", lrs=HIGHER),
    # The audit issue's other rows (31: every method of the 10 % plan re-audited with the control): the plan's
    # own run at its one learning rate, its final model (as the first audit took it), no sweep; last, since
    # no robust claim rests on them.
    *(Variant(key, label, key, lrs=(PROTOCOL_LR,), final_only=True) for key, label in
      (("ga", "GA"), ("grad_diff", "GradDiff"), ("wga", "WGA"), ("satimp", "SatImp"), ("ceu", "CE-U"),
       ("pdu", "PDU"))),
)
BY_KEY = {v.key: v for v in VARIANTS}
# The audit's sanity rows: the target before unlearning and the control itself, each audited as if it were the
# unlearned model (the target the original). By construction the target's residual is ~1 (it still knows) and
# the control's exactly 0 (it is the control, attacked alike); anything else is a fault in the pipeline.
SANITY = {"target": "the target, not unlearned", "control": "the control itself"}
# The audit issue's last row: the mini-TOFU NPO+RT run (tofu_mini.py's plan mini-lr5e-5, its final model, as
# docs/results/audit_mini_npo_rt.json audited it before), against that plan's own retain model (authors 0-9).
MINI = "mini_npo_rt"
# What `robust.py` measures, in order: NPO+RT, then the sanity rows (cheap, and they check the pipeline before
# hours go into the rest), then the other rows, the mini-TOFU run last.
ORDER = (VARIANTS[0].key, *SANITY, *(v.key for v in VARIANTS[1:]), MINI)


def base_plan() -> Plan:
    return forget50_plans()[0]   # forget50-10pct


def sweep_plan(lr: float) -> Plan:
    """The record's plan for one learning rate: the 10 % plan's models and evaluations, unlearning at `lr`."""
    base = base_plan()
    return replace(base, name=f"robust-lr{lr:g}", unlearn_lr=lr, learned_in=base.name,
                   methods=tuple(v.key for v in VARIANTS))


# Each epoch of a sweep is evaluated for what the best-checkpoint rule reads, Forget Quality and Model Utility:
# the tofu suite's "selection" figures (no forget-answer generation, fluency or membership attack), ~40 % less
# evaluation time on this CPU, the same FQ and MU. Part of the record's settings. Since 2026-12-07 every epoch
# is first evaluated for Forget Quality alone (50 s against 165 s here) and only the epochs the rule needs get
# Model Utility (utility_needed): the same choice, the other points without MU.
EPOCH_FIGURES = "selection"


def sweep_settings(lr: float) -> dict:
    """What the record keeps one learning rate's curves under: its plan and how its epochs are evaluated."""
    from dataclasses import asdict

    return {**asdict(sweep_plan(lr)), "epoch_figures": EPOCH_FIGURES}


def choose(variant: Variant, curves: dict[float, list[dict]]) -> dict:
    """The best-checkpoint rule over every (learning rate, epoch) of the method's sweep."""
    candidates = [dict(p, lr=lr) for lr, points in curves.items() for p in variant.epochs(points)]
    target = next(iter(curves.values()))[0]
    best = best_point([target] + candidates, target["mu"])
    return {"lr": best["evaluation"]["lr"], "epoch": best["evaluation"]["epoch"], "meets_floor": best["meets_floor"]}


def utility_needed(variant: Variant, points: list[dict]) -> list[int]:
    """The epochs of one learning rate's points whose Model Utility the best-checkpoint rule still reads, given
    every epoch's Forget Quality: the epochs of the highest FQ whose MU is unknown, level by level down until a
    level has an epoch at the MU floor; empty once the rule's choice is settled. The rule (highest FQ with MU
    >= the floor, ties by MU; if none, the highest MU) then chooses as it would with every MU known, for this
    learning rate and so across them: an epoch left without MU is beaten by the settled one."""
    from core.evaluation.selection import UTILITY_FLOOR

    floor = UTILITY_FLOOR * points[0]["mu"]
    candidates = variant.epochs(points)
    for level in sorted({p["fq"] for p in candidates}, reverse=True):
        at = [p for p in candidates if p["fq"] == level]
        unknown = [p["epoch"] for p in at if p["mu"] is None]
        if unknown:
            return unknown
        if any(p["mu"] >= floor for p in at):
            return []
    return []


def sweep_steps() -> int:
    """Optimizer steps of one sweep run: the plan's epochs over its forget answers."""
    from core.tofu import author_records

    plan = base_plan()
    return plan.unlearn_epochs * -(-len(author_records(*plan.forget_authors)) // plan.unlearn_batch)


# NPO+RT's run timed on a machine that has no NPO+RT sweep run of its own (robust.py: Robust.time_baseline)
BASELINE_TIMING = "robust/timing-npo_rt"


def step_seconds(ledger: Ledger, variant: Variant, steps: int) -> dict[str, float]:
    """CPU seconds per optimizer step of the method's training stages, per machine they ran on: the median over
    the learning rates run there (a step's cost hardly depends on the rate). The median, since one run can be
    off either way: a resumed run's stage holds only the steps after its restart (MUDMAN at 1e-3: 2.6 s a step
    against 8.9 and 9.5), and a run beside other work counts CPU seconds its threads spent waiting (NPO+RT +
    quant-aware at 1e-4, beside the test suite: 30.0 against 15.3 and 15.6). NPO+RT's timing run counts as one
    of its stages."""
    keys = [f"robust/{variant.key}-lr{lr:g}" for lr in variant.lrs]
    keys += [BASELINE_TIMING] if variant.key == "npo_rt" else []
    per_machine: dict[str, list[float]] = {}
    for key in keys:
        for name, measured in ledger.data["stages"].get(key, {}).get("machines", {}).items():
            per_machine.setdefault(name, []).append(measured["cpu"] / _steps_taken(measured, steps))
    return {name: statistics.median(values) for name, values in per_machine.items()}


def _steps_taken(measured: dict, steps: int) -> int:
    """The steps a stage's CPU seconds paid for: as counted where every invocation counted them (a resumed run
    then shows the steps after its restart), else the run's whole `steps` (stages recorded before they were
    counted)."""
    counted = measured.get("counted") == measured["invocations"] and measured.get("steps", 0) > 0
    return measured["steps"] if counted else steps


def step_cost(ledger: Ledger, variant: Variant, baseline: Variant, steps: int) -> dict[str, float]:
    """The method's CPU seconds per step over the baseline's, per machine that timed both."""
    mine, theirs = step_seconds(ledger, variant, steps), step_seconds(ledger, baseline, steps)
    return {name: mine[name] / theirs[name] for name in mine if theirs.get(name)}
