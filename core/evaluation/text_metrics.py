"""Metrics on generated text: ROUGE recall against the reference answer, and fluency.

Fluency (see docs/evaluation.md): gradient ascent drives a model to gibberish, either token salad (which
the original model finds very unlikely) or loops ("the the the", which it may find likely). So a
generation's fluency is the product of two factors in [0, 1]:

    fluency = (1 - repetition) * min(1, PPL_OK / perplexity)

- repetition: the share of word bigrams that repeat an earlier bigram of the same text (rep-2 of Welleck
  et al. 2019): 0 for normal prose, towards 1 for a loop;
- perplexity: exp(mean token NLL) of the generation, as the answer to its question, under the original
  model (before unlearning); PPL_OK = 20: an answer the original model finds at most that surprising
  counts as fully fluent, ppl 200 scores 0.1.
An empty generation scores 0: it says nothing, fluently or not.
"""
from __future__ import annotations

import math
import re

from ..errors import UnlearnError, require

PPL_OK = 20.0
_WORD = re.compile(r"\w+")


def rouge_recall(generations: list[str], references: list[str]) -> dict[str, list[float]]:
    """ROUGE-1 and ROUGE-L recall per pair (rouge-score, Porter stemmer on), as TOFU computes them."""
    require(len(generations) == len(references),
            f"{len(generations)} generations but {len(references)} reference answers", "pass one answer per generation")
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise UnlearnError("the rouge-score package is not installed", "run: pip install rouge-score") from None
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, gen) for gen, ref in zip(generations, references)]
    return {"rouge1_recall": [s["rouge1"].recall for s in scores],
            "rougeL_recall": [s["rougeL"].recall for s in scores]}


def rouge_l_f1(generations: list[str], references: list[str]) -> list[float]:
    """ROUGE-L F1 per pair (rouge-score, Porter stemmer on): MUSE's VerbMem and KnowMem score."""
    require(len(generations) == len(references),
            f"{len(generations)} generations but {len(references)} references", "pass one reference per generation")
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, gen)["rougeL"].fmeasure for gen, ref in zip(generations, references)]


def repetition(text: str, n: int = 2) -> float:
    """Share of word n-grams that repeat an earlier one in the same text (0 for fewer than n words)."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def fluency(text: str, mean_token_nll: float) -> float:
    """(1 - repetition) * min(1, PPL_OK / perplexity); 0 for an empty generation."""
    if not _WORD.search(text):
        return 0.0
    perplexity = math.exp(min(mean_token_nll, 50.0))  # cap: exp overflows long before it matters
    return (1.0 - repetition(text)) * min(1.0, PPL_OK / perplexity)
