"""How much of what unlearning removed comes back in an attacked or exported model: one definition for the
audit (`audit/`) and the export's forgetting check (`export/parity.py`), so that their figures agree.

For a figure f (forget-answer NLL, probability, ROUGE-L) under the original model, the unlearned model and
the attacked (or quantised) one:

    recovery = (f_attacked − f_unlearned) / (f_original − f_unlearned)

0: still forgotten; 1: fully restored; above 1: more than before unlearning; below 0: it forgot more.
Undefined (None) unless unlearning moved the figure by at least MIN_CHANGE the forgetting way (NLL up,
probability and ROUGE-L down): otherwise there was nothing to recover, and a ratio of two near-equal numbers
would be noise (a run that forgot 0.001 nats would otherwise show a "recovery" of -13; one whose greedy
answers came out 0.04 ROUGE-L *better* by chance, a "recovery" of 1.6 when a fine-tune reworded them).

When the attack changes how the models are asked (rephrasing), the prompt alone moves every model's figures:
a chat model answers a raw "Question: ... Answer:" prompt worse whether it forgot or not. The attacked figure
is then set against the original model asked the same way (`attacked_original`), and the recovery is the
share of the unlearning's effect that is gone when asked so:

    recovery = 1 − effect(original asked so, attacked) / effect(original, unlearned)

with effect = NLL gap (unlearned − original; a log-probability ratio already) or, for probability and
ROUGE-L, the relative drop 1 − unlearned / original. With one original for both (every other attack) this
is exactly the formula above; undefined also when the original asked so shows less than MIN_CHANGE of a
probability or ROUGE-L, as there is then nothing it could lose."""
from __future__ import annotations

import math

import numpy as np

MIN_CHANGE = {"nll": 0.05, "prob": 0.01, "rougeL": 0.02}   # nats per token, probability, ROUGE-L recall
FIGURES = ("nll", "prob", "rougeL")


def recovery(original: float, unlearned: float, attacked: float, figure: str,
             attacked_original: float | None = None) -> float | None:
    value = float(recovery_array(original, unlearned, attacked, figure, attacked_original))
    return None if math.isnan(value) else value


def recovery_array(original, unlearned, attacked, figure: str, attacked_original=None):
    """`recovery` on numbers or numpy arrays alike (elementwise; nan where undefined), so that a bootstrap
    computes it over many resamples at once with the very formula of the point."""
    original, unlearned, attacked = (np.asarray(v, dtype=np.float64) for v in (original, unlearned, attacked))
    removed = original - unlearned
    defined = (-removed if figure == "nll" else removed) >= MIN_CHANGE[figure]
    with np.errstate(divide="ignore", invalid="ignore"):
        if attacked_original is None:
            return np.where(defined, (attacked - unlearned) / removed, np.nan)
        attacked_original = np.asarray(attacked_original, dtype=np.float64)
        if figure != "nll":
            defined &= attacked_original >= MIN_CHANGE[figure]
        return np.where(defined, 1 - _effect(attacked_original, attacked, figure) / _effect(original, unlearned, figure),
                        np.nan)


def _effect(original, unlearned, figure: str):
    """What unlearning did to a figure: the NLL gap, or the relative drop of a probability or ROUGE-L."""
    return unlearned - original if figure == "nll" else 1 - unlearned / original
