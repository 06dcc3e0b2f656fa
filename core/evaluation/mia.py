"""Membership inference: the min-k% probability attack (Shi et al. 2023) and MUSE's privacy leakage.

An attacker who sees that the model finds the forget answers more likely than answers it never trained on
learns that those answers were in its training data. The AUC of that test is 0.5 when forget and held-out
data look alike (what a model never trained on the forget set shows), near 1 after plain fine-tuning.
"""
from __future__ import annotations

import numpy as np

from ..errors import require

MIN_K = 0.4   # open-unlearning's default k for min-k% probability


def min_k_score(token_logprobs, k: float = MIN_K) -> float:
    """Mean log-probability of the k-fraction least likely tokens (at least one token); higher = member-like."""
    values = np.sort(np.asarray(token_logprobs, dtype=float))
    require(values.size > 0, "min-k% probability needs at least one scored token", "check that answers are not empty")
    require(0 < k <= 1, f"k must be in (0, 1], got {k}")
    count = max(1, int(values.size * k))
    return float(values[:count].mean())


def auc(member_scores, nonmember_scores) -> float:
    """P(a random member scores above a random non-member), ties counted half (the ROC AUC)."""
    members = np.asarray(member_scores, dtype=float)
    others = np.asarray(nonmember_scores, dtype=float)
    require(members.size > 0 and others.size > 0, "the MIA AUC needs forget and held-out samples",
            "give a non-empty --holdout set")
    greater = (members[:, None] > others[None, :]).mean()
    ties = (members[:, None] == others[None, :]).mean()
    return float(greater + 0.5 * ties)


def privacy_leakage(model_auc: float, retain_auc: float) -> float:
    """MUSE's PrivLeak in %: (AUC_model - AUC_retain) / AUC_retain * 100. Near 0 is ideal; positive means
    the forget set is still recognisable (under-unlearned), negative that it stands out as unusually
    unlikely (over-unlearned)."""
    require(retain_auc > 0, f"the retain model's AUC must be positive, got {retain_auc}")
    return (model_auc - retain_auc) / retain_auc * 100.0
