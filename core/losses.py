"""Pure loss functions: tensors in, tensors out, no model and no state.

Conventions: `nll` is the per-sequence *sum* of answer-token negative log-likelihoods, shape [B];
`n_tokens` the number of answer tokens per sequence, shape [B]. Token-mean losses divide the batch's
summed NLL by its token count, as `CrossEntropyLoss(reduction="mean")` does in the reference code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL per sequence and its token count.

    logits [B, T, V] predict labels [B, T] shifted by one; positions labelled IGNORE_INDEX are skipped.
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    per_token = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="none",
    ).view(shift_labels.shape)
    n_tokens = (shift_labels != IGNORE_INDEX).sum(-1)
    return per_token.sum(-1), n_tokens


def token_mean(nll: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """Mean NLL per answer token over the whole batch."""
    return nll.sum() / n_tokens.sum().clamp(min=1)


def gradient_ascent_loss(nll: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """GA: minimise the negative token-mean NLL, i.e. push the forget answers' likelihood down."""
    return -token_mean(nll, n_tokens)


def npo_loss(nll: torch.Tensor, ref_nll: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO (Zhang et al. 2024): -(2/β)·logσ(β·(NLL_θ − NLL_ref)), averaged over sequences.

    Equals (2/β)·log 2 at θ = ref; its gradient tends to GA's on the summed NLL as β -> 0, but it
    saturates once NLL_θ ≫ NLL_ref, which is what keeps NPO from collapsing into gibberish.
    """
    return -(2.0 / beta) * F.logsigmoid(beta * (nll - ref_nll)).mean()


def simnpo_loss(nll: torch.Tensor, n_tokens: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
    """SimNPO (Fan et al. 2024): reference-free, length-normalised NPO with margin δ.

    -(2/β)·logσ(β·(NLL_θ/|y| − δ)), averaged over sequences.
    """
    mean_nll = nll / n_tokens.clamp(min=1)
    return -(2.0 / beta) * F.logsigmoid(beta * (mean_nll - delta)).mean()


def dpo_loss(nll_chosen: torch.Tensor, ref_nll_chosen: torch.Tensor,
             nll_rejected: torch.Tensor, ref_nll_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO (Rafailov et al. 2023) in NLL form: -(2/β)·logσ(β·(log-ratio_chosen − log-ratio_rejected)).

    log-ratio = log π_θ − log π_ref = NLL_ref − NLL_θ. The 2/β scale follows open-unlearning's DPO.
    """
    chosen = ref_nll_chosen - nll_chosen
    rejected = ref_nll_rejected - nll_rejected
    return -(2.0 / beta) * F.logsigmoid(beta * (chosen - rejected)).mean()


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(π_ref ‖ π_θ) per next-token distribution, averaged over supervised positions.

    Matches the reference code's `kl_div(current, reference, log_target=True)` but skips padding.
    """
    mask = (labels[:, 1:] != IGNORE_INDEX)
    log_p = F.log_softmax(logits[:, :-1, :].float(), dim=-1)[mask]      # [N, V]
    log_ref = F.log_softmax(ref_logits[:, :-1, :].float(), dim=-1)[mask]  # [N, V]
    per_position = (log_ref.exp() * (log_ref - log_p)).sum(-1)
    return per_position.mean() if per_position.numel() else logits.sum() * 0.0
