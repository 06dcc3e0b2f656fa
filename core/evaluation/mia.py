"""Membership inference: the min-k% probability attack (Shi et al. 2023) and MUSE's privacy leakage.

Conventions (open-unlearning's): the AUC is 1 when every forget (member) sample looks more member-like than
every held-out one; min-k% leaves out each answer's last token, the end-of-sequence prediction.

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


def scored_tokens(answer_logprobs: list[float]) -> list[float]:
    """The answer tokens a membership score reads: all but the last, which predicts the end of the answer
    (open-unlearning's tokenwise_logprobs leaves that prediction out; on a tiny model keeping it moved an
    AUC from 0.5625 to 0.625). A one-token answer keeps its token."""
    return list(answer_logprobs[:-1]) if len(answer_logprobs) > 1 else list(answer_logprobs)


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
    """MUSE's PrivLeak in %, as MUSE and open-unlearning define it, on 1 − AUC:
    ((1 − AUC_model) − (1 − AUC_retain)) / (1 − AUC_retain) × 100. 0 is ideal (the forget set looks to the
    attack as it does to a model never trained on it); negative means the forget set is still recognisable
    (under-unlearned: AUC above the retain model's), positive that it stands out as unusually unlikely
    (over-unlearned). AUC 0.9 against a retain model's 0.5 gives −80."""
    require(retain_auc < 1, f"the retain model's AUC must be below 1, got {retain_auc}",
            "check the retain model's evaluation: an AUC of 1 leaves PrivLeak undefined")
    return ((1 - model_auc) - (1 - retain_auc)) / (1 - retain_auc) * 100.0
