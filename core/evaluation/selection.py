"""Best-checkpoint selection from per-epoch evaluations.

Rule: among the checkpoints that keep at least `utility_floor` (default 90 %) of the original model's Model
Utility, take the one with the highest Forget Quality; ties go to the higher utility. If no checkpoint keeps
that much utility, none is "good": the one with the highest utility is returned, marked as missing the floor,
so a user sees the trade-off rather than a silently bad pick. (Forgetting is worth nothing once the model
is broken, and utility is worth nothing if the data is still there: the floor encodes the first, the
maximised Forget Quality the second.)
"""
from __future__ import annotations

from ..errors import require

UTILITY_FLOOR = 0.9


def select_best(evaluations: list[dict], original_utility: float, utility_floor: float = UTILITY_FLOOR,
                forget_key: str = "Forget Quality", utility_key: str = "Model Utility") -> dict:
    """Pick one of `evaluations` (dicts holding forget_key and utility_key, plus anything else, such as an
    epoch or a checkpoint path). Returns {"index", "evaluation", "meets_floor", "rule"}."""
    require(len(evaluations) > 0, "there are no evaluations to choose a checkpoint from",
            "evaluate at least one checkpoint")
    require(original_utility > 0, f"the original model's utility must be positive, got {original_utility}")
    for i, ev in enumerate(evaluations):
        require(forget_key in ev and utility_key in ev, f"evaluation {i} lacks {forget_key!r} or {utility_key!r}",
                "evaluate with the tofu suite and a retain model's logs (--retain-logs)")
    floor = utility_floor * original_utility
    eligible = [i for i, ev in enumerate(evaluations) if ev[utility_key] >= floor]
    if eligible:
        best = max(eligible, key=lambda i: (evaluations[i][forget_key], evaluations[i][utility_key]))
    else:
        best = max(range(len(evaluations)), key=lambda i: evaluations[i][utility_key])
    return {"index": best, "evaluation": evaluations[best], "meets_floor": bool(eligible),
            "rule": f"highest {forget_key} with {utility_key} >= {utility_floor:g} x the original's "
                    f"({floor:.4f}); if none, the highest {utility_key}"}
