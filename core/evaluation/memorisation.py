"""Memorisation of answers, teacher-forced (as open-unlearning's src/evals/metrics/memorization.py):

- Exact Memorisation (EM; Tirumala et al. 2022): the share of answer tokens that are the model's greedy
  choice given the true text before them.
- Extraction Strength (ES; Carlini et al. 2021, as open-unlearning uses it): 1 − k/T, where k is the
  shortest prefix of the answer after which every remaining token is the greedy choice (T tokens). 1: the
  whole answer follows from the prompt alone; 0: not even the last token does.

Both leave out the answer's last token (the end-of-turn prediction), as open-unlearning's token
log-probabilities do. Where no suffix matches at all, ES is 0 by the definition; open-unlearning's loop
then leaves k at T − 1 and reports 1/T."""
from __future__ import annotations

from .mia import scored_tokens
from .probes import TokenStats


def exact_memorisation(stats: TokenStats) -> float:
    hits = scored_tokens(stats.greedy_hit)
    return sum(hits) / len(hits) if hits else 0.0


def extraction_strength(stats: TokenStats) -> float:
    hits = scored_tokens(stats.greedy_hit)
    total = len(hits)
    matching_suffix = 0
    for hit in reversed(hits):    # the longest run of greedy hits that ends the answer
        if not hit:
            break
        matching_suffix += 1
    return matching_suffix / total if total else 0.0
