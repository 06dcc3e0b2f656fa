"""How much of what unlearning removed comes back in an attacked or exported model: one definition for the
audit (`audit/`) and the export's forgetting check (`export/parity.py`), so that their figures agree.

For a figure f (forget-answer NLL, probability, ROUGE-L) under the original model, the unlearned model and
the attacked (or quantised) one:

    recovery = (f_attacked − f_unlearned) / (f_original − f_unlearned)

0: still forgotten; 1: fully restored; above 1: more than before unlearning; below 0: it forgot more.
Undefined (None) when unlearning moved the figure by less than MIN_CHANGE: there was nothing to recover,
and a ratio of two near-equal numbers would be noise (a run that forgot 0.001 nats would otherwise show a
"recovery" of -13)."""
from __future__ import annotations

MIN_CHANGE = {"nll": 0.05, "prob": 0.01, "rougeL": 0.02}   # nats per token, probability, ROUGE-L recall
FIGURES = ("nll", "prob", "rougeL")


def recovery(original: float, unlearned: float, attacked: float, figure: str) -> float | None:
    removed = original - unlearned
    if abs(removed) < MIN_CHANGE[figure]:
        return None
    return (attacked - unlearned) / removed
