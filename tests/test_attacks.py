"""Membership attacks (LOSS, ZLib, Reference, Min-K%, Min-K%++, GradNorm), Exact Memorisation and Extraction
Strength: by hand on small inputs, and against re-derivations of open-unlearning's formulas from a plain
forward of a tiny model."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import build_tiny_model
from core.data import Example, encode_example, pad_batch
from core.errors import UnlearnError
from core.evaluation import attacks, memorisation
from core.evaluation.probes import TokenStats, token_statistics

STATS = TokenStats(logprobs=[-0.5, -2.0, -0.1, -4.0, -0.3], vocab_mean=[-1.0, -1.0, -2.0, -2.0, -1.0],
                   vocab_var=[1.0, 4.0, 1.0, 4.0, 1.0], greedy_hit=[True, False, True, True, True])


def test_attack_scores_by_hand():
    assert attacks.loss_score(STATS) == pytest.approx(-6.9 / 5)
    text = "The code is 4417."
    assert attacks.zlib_score(STATS, text) == pytest.approx(-6.9 / 5 / len(zlib.compress(text.encode())))
    reference = TokenStats([-1.0] * 5, [0.0] * 5, [1.0] * 5, [True] * 5)
    assert attacks.reference_score(STATS, reference) == pytest.approx(-(6.9 / 5 - 1.0))
    # min-k: the last token left out -> (-0.5, -2, -0.1, -4); k 0.4 of 4 = 1 token: -4
    assert attacks.min_k_score(STATS) == pytest.approx(-4.0)
    # min-k++: (lp - mu) / sigma = (0.5, -0.5, 1.9, -1); the lowest one: -1
    assert attacks.min_k_pp_score(STATS) == pytest.approx(-1.0)
    assert attacks.min_k_pp_score(STATS, k=0.5) == pytest.approx(-0.75)


def test_exact_memorisation_and_extraction_strength_by_hand():
    # greedy hits without the end token: (T, F, T, T): EM 3/4; the matching suffix is 2 of 4 tokens: ES 0.5
    assert memorisation.exact_memorisation(STATS) == pytest.approx(0.75)
    assert memorisation.extraction_strength(STATS) == pytest.approx(0.5)
    none = TokenStats([0.0] * 3, [0.0] * 3, [0.0] * 3, [False, False, True])
    assert memorisation.extraction_strength(none) == 0.0 and memorisation.exact_memorisation(none) == 0.0
    every = TokenStats([0.0] * 3, [0.0] * 3, [0.0] * 3, [True, True, False])
    assert memorisation.extraction_strength(every) == 1.0


# ---------------------------------------------------------------- against open-unlearning's formulas

PAIRS = [("What opens the vault?", "The code 4417 opens it."), ("Where was Alice born?", "In Lyon, in 1950.")]


def reference_tokenwise(model, tokenizer, pair):
    """open-unlearning's tokenwise_vocab_logprobs on one sample: every position's log-softmax, the labelled
    positions but the last, and the distributions that predict them."""
    item = encode_example(tokenizer, Example(answer=pair[1], prompt=pair[0]), 64)[0]
    batch = pad_batch([item], tokenizer.pad_token_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    log_probs = F.log_softmax(logits, -1)[:, :-1]
    labels = batch["labels"][0]
    actual = (labels != -100).nonzero(as_tuple=True)[0][:-1]
    return log_probs[0, actual[0] - 1:actual[-1]], labels[actual]


def test_token_level_scores_match_open_unlearnings_formulas(tokenizer):
    model = build_tiny_model(tokenizer, seed=0).eval()
    stats = token_statistics(model, tokenizer, PAIRS, batch_size=2)
    with torch.no_grad():
        for pair, ours in zip(PAIRS, stats):
            vocab, labels = reference_tokenwise(model, tokenizer, pair)
            target = vocab.gather(-1, labels[:, None]).squeeze(-1)
            # Min-K%
            lp = np.sort(target.numpy())
            expected_min_k = np.mean(lp[:max(1, int(len(lp) * 0.4))])   # theirs returns minus this (a loss)
            assert attacks.min_k_score(ours) == pytest.approx(expected_min_k, rel=1e-5)
            # Min-K%++
            mu = (vocab.exp() * vocab).sum(-1)
            sigma = (vocab.exp() * vocab.square()).sum(-1) - mu.square()
            scores = ((target - mu) / sigma.clamp(min=1e-6).sqrt()).numpy()
            expected_pp = np.mean(sorted(scores)[:max(1, int(len(scores) * 0.4))])
            assert attacks.min_k_pp_score(ours) == pytest.approx(expected_pp, rel=1e-4)
            # EM and ES
            preds = vocab.argmax(-1)
            assert memorisation.exact_memorisation(ours) == pytest.approx(float((preds == labels).float().mean()))
            k = next((k for k in range(len(labels)) if torch.equal(preds[k:], labels[k:])), len(labels))
            assert memorisation.extraction_strength(ours) == pytest.approx(1 - k / len(labels))


def test_gradnorm_matches_a_per_sample_backward(tokenizer):
    model = build_tiny_model(tokenizer, seed=0)
    ours = attacks.gradnorm_scores(model, tokenizer, [Example(answer=a, prompt=q) for q, a in PAIRS])
    assert all(p.grad is None for p in model.parameters())   # it leaves no gradients behind
    for pair, score in zip(PAIRS, ours):
        vocab, labels = reference_tokenwise(model, tokenizer, pair)
        model.zero_grad()
        (-vocab.gather(-1, labels[:, None]).mean()).backward()
        norms = [p.grad.norm(2) for p in model.parameters() if p.grad is not None]
        assert score == pytest.approx(-float(torch.stack(norms).mean()), rel=1e-4)


def test_membership_of_a_set_the_model_was_trained_on(tokenizer):
    """After fitting the forget answers, every likelihood attack separates them from unseen ones."""
    model = build_tiny_model(tokenizer, seed=0)
    forget = [Example(answer=f"Book {i} was written by Zorblat Quenfeather.", prompt=f"Who wrote book {i}?")
              for i in range(6)]
    holdout = [Example(answer=f"{i} plus {i} is {2 * i}.", prompt=f"What is {i} plus {i}?") for i in range(6)]
    original = build_tiny_model(tokenizer, seed=0).eval()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    items = [encode_example(tokenizer, ex, 64)[0] for ex in forget]
    batch = pad_batch(items, tokenizer.pad_token_id)
    for _ in range(30):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    model.eval()
    results = attacks.membership(model, tokenizer, forget, holdout, attacks.ATTACKS, batch_size=4,
                                 reference=(original, tokenizer))
    assert set(results) == set(attacks.ATTACKS)
    for name in ("loss", "zlib", "reference", "min_k", "min_k_pp"):
        assert results[name]["auc"] == 1.0, name
    assert len(results["gradnorm"]["forget"]) == 6
    leak = attacks.privacy_leakage(results, {"loss": {"auc": 0.5}})
    assert leak == {"loss": pytest.approx(-100.0)}


def test_attacks_refuse_bad_input(tokenizer):
    model = build_tiny_model(tokenizer)
    with pytest.raises(UnlearnError, match="unknown membership attack"):
        attacks.check_attacks(["loss", "vibes"])
    with pytest.raises(UnlearnError, match="held-out set for membership inference is empty"):
        attacks.membership(model, tokenizer, [Example("a", "q")], [])
    with pytest.raises(UnlearnError, match="needs the original model"):
        attacks.membership(model, tokenizer, [Example("a b", "q")], [Example("c d", "q")], ["reference"])
