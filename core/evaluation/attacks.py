"""The standard membership-inference attacks, as open-unlearning runs them (src/evals/metrics/mia/): each
gives every sample a score, higher = more member-like, and an attack's AUC is P(a forget sample scores above
a held-out one) (mia.auc). A model that never saw the forget set sits near 0.5; PrivLeak compares an AUC
with a retain model's (mia.privacy_leakage, MUSE's definition).

- loss       Yeom et al. 2018: −(mean answer NLL).
- zlib       Carlini et al. 2021: −(mean answer NLL) / zlib-compressed length of the answer text (bytes).
- reference  Carlini et al. 2021: −(NLL_model − NLL_reference), the reference being the original model.
- min_k      Shi et al. 2023: mean log p of the k = 40 % least likely answer tokens.
- min_k_pp   Zhang et al. 2024 (Min-K%++): the same over (log p_t − μ_t) / σ_t, μ_t and σ_t² the mean and
             variance of log p under the model's own next-token distribution at t.
- gradnorm   Wang et al. 2024: −(mean over parameter tensors of the L2 norm of the gradient of the answer's
             mean token NLL): members sit where the loss is flat.

As in open-unlearning, the token-level attacks (min_k, min_k_pp, gradnorm) leave out each answer's last
token (the end-of-turn prediction); loss, zlib and reference read every answer token."""
from __future__ import annotations

import zlib

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import require
from . import mia
from .probes import TokenStats, encode_pairs, token_statistics

ATTACKS = ("loss", "zlib", "reference", "min_k", "min_k_pp", "gradnorm")
DEFAULT_ATTACKS = ("loss", "zlib", "reference", "min_k", "min_k_pp")   # gradnorm: a backward per sample


def check_attacks(names) -> list[str]:
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in ATTACKS]
    require(not unknown, f"unknown membership attack(s): {', '.join(unknown)}", f"choose from {', '.join(ATTACKS)}")
    return names


def loss_score(stats: TokenStats) -> float:
    return -stats.nll


def zlib_score(stats: TokenStats, text: str) -> float:
    return -stats.nll / len(zlib.compress(text.encode("utf-8")))


def reference_score(stats: TokenStats, reference: TokenStats) -> float:
    return -(stats.nll - reference.nll)


def min_k_score(stats: TokenStats, k: float = mia.MIN_K) -> float:
    return mia.min_k_score(mia.scored_tokens(stats.logprobs), k)


def min_k_pp_score(stats: TokenStats, k: float = mia.MIN_K) -> float:
    """Min-K%++: the mean of the k lowest standardised token log-probabilities."""
    logprobs = np.asarray(mia.scored_tokens(stats.logprobs))
    mean = np.asarray(mia.scored_tokens(stats.vocab_mean))
    std = np.sqrt(np.maximum(np.asarray(mia.scored_tokens(stats.vocab_var)), 1e-6))
    return mia.min_k_score((logprobs - mean) / std, k)


def gradnorm_scores(model, tokenizer, examples, desc: str = "MIA: gradnorm") -> list[float]:
    """−(mean over parameter tensors of ||∇ mean token NLL||₂) per sample, one backward each."""
    from ..data import pad_batch
    from ..scoring import forward_logits

    items = encode_pairs(tokenizer, examples)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad] or list(model.parameters())
    flags = [p.requires_grad for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)
    scores = []
    model.eval()
    try:
        for item in tqdm(items, desc=desc, leave=False, unit="sample"):
            part = {k: v.to(device) for k, v in pad_batch([item], tokenizer.pad_token_id).items()}
            logits, labels = forward_logits(model, part)
            logp = torch.log_softmax(logits[:, :-1].float(), -1)
            targets = labels[:, 1:]
            picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)[targets != -100]
            kept = picked[:-1] if picked.numel() > 1 else picked     # the end-of-answer token left out
            model.zero_grad(set_to_none=True)
            (-kept.mean()).backward()
            norms = [p.grad.detach().norm(2) for p in params if p.grad is not None]
            scores.append(-float(torch.stack(norms).mean()))
    finally:
        model.zero_grad(set_to_none=True)
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    return scores


def attack_scores(model, tokenizer, examples, attacks, batch_size: int, reference=None, role: str = "") -> dict:
    """{attack: [score per example]} for one set (forget or held-out)."""
    texts = [ex.answer for ex in examples]
    stats = token_statistics(model, tokenizer, examples, batch_size, f"MIA: {role}")
    scores = {}
    if "loss" in attacks:
        scores["loss"] = [loss_score(s) for s in stats]
    if "zlib" in attacks:
        scores["zlib"] = [zlib_score(s, t) for s, t in zip(stats, texts)]
    if "min_k" in attacks:
        scores["min_k"] = [min_k_score(s) for s in stats]
    if "min_k_pp" in attacks:
        scores["min_k_pp"] = [min_k_pp_score(s) for s in stats]
    if "reference" in attacks:
        require(reference is not None, "the reference attack needs the original model", "pass --original MODEL")
        ref_model, ref_tokenizer = reference
        ref_stats = token_statistics(ref_model, ref_tokenizer, examples, batch_size, f"MIA: {role} (reference)")
        scores["reference"] = [reference_score(s, r) for s, r in zip(stats, ref_stats)]
    if "gradnorm" in attacks:
        scores["gradnorm"] = gradnorm_scores(model, tokenizer, examples, f"MIA: {role} gradnorm")
    return scores


def membership(model, tokenizer, forget, holdout, attacks=DEFAULT_ATTACKS, batch_size: int = 8,
               reference=None) -> dict:
    """Every attack's AUC of forget (members) against held-out (non-members), with the per-sample scores."""
    require(len(holdout) > 0, "the held-out set for membership inference is empty", "give a non-empty --holdout")
    attacks = check_attacks(attacks)
    members = attack_scores(model, tokenizer, forget, attacks, batch_size, reference, "forget")
    others = attack_scores(model, tokenizer, holdout, attacks, batch_size, reference, "holdout")
    return {name: {"auc": mia.auc(members[name], others[name]), "forget": members[name], "holdout": others[name]}
            for name in attacks}


def privacy_leakage(results: dict, retain_results: dict) -> dict:
    """PrivLeak of every attack the retain model's results also have."""
    return {name: mia.privacy_leakage(r["auc"], retain_results[name]["auc"])
            for name, r in results.items() if name in retain_results}
