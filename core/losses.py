"""Pure loss functions: tensors in, tensors out, no model and no state.

Conventions: `nll` is the per-sequence *sum* of answer-token negative log-likelihoods, shape [B];
`n_tokens` the number of answer tokens per sequence, shape [B]. Token-mean losses divide the batch's
summed NLL by its token count, as `CrossEntropyLoss(reduction="mean")` does in the reference code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token NLL at each predicting position [B, T-1] (0 where there is no label) and the label mask.

    logits [B, T, V] predict labels [B, T] shifted by one; positions labelled IGNORE_INDEX are skipped.
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    per_token = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="none",
    ).view(shift_labels.shape)
    return per_token, shift_labels != IGNORE_INDEX


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL per sequence [B] and its token count [B]."""
    per_token, mask = token_nll(logits, labels)
    return per_token.sum(-1), mask.sum(-1)


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
    return _next_token_kl(logits, ref_logits, labels[:, 1:] != IGNORE_INDEX)


def _next_token_kl(logits: torch.Tensor, ref_logits: torch.Tensor, predicts: torch.Tensor) -> torch.Tensor:
    """KL(π_ref ‖ π_θ) of each position's next-token distribution, averaged over the positions t < T−1 where
    `predicts` [B, T−1] is true; 0 (with the graph kept) when there are none."""
    log_p = F.log_softmax(logits[:, :-1, :].float(), dim=-1)[predicts]      # [N, V]
    log_ref = F.log_softmax(ref_logits[:, :-1, :].float(), dim=-1)[predicts]  # [N, V]
    per_position = (log_ref.exp() * (log_ref - log_p)).sum(-1)
    return per_position.mean() if per_position.numel() else logits.sum() * 0.0


def weighted_ascent_loss(token_nll: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Token-weighted gradient ascent: -mean over answer tokens of w_t·NLL_t, the weights held constant
    (WGA, SatImp). token_nll, mask, weight: [B, T]."""
    return -(weight.detach() * token_nll)[mask].mean()


def wga_weights(token_nll: torch.Tensor, beta: float) -> torch.Tensor:
    """WGA (Wang et al. 2025): w_t = p_t^β, p_t = exp(-NLL_t): the tokens the model still knows weigh most."""
    return torch.exp(-token_nll) ** beta


def satimp_weights(token_nll: torch.Tensor, beta1: float, beta2: float) -> torch.Tensor:
    """SatImp (Yang et al. 2025): w_t = p_t^β1 · (1 − p_t)^β2, saturation times importance."""
    p = torch.exp(-token_nll)
    return p ** beta1 * (1 - p) ** beta2


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross entropy of next-token logits [B, T, V] against target distributions [B, T, V], averaged
    over the positions where mask [B, T] is true."""
    per_position = -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1)
    return per_position[mask].mean()


def ce_unlearning_target(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE-U (Yang et al. 2025): the model's own next-token distribution with the true token removed
    (its logit set to −inf), held constant. logits [B, T, V] at the predicting positions, labels [B, T]
    the tokens they predict."""
    target = logits.detach().float().clone()
    target.scatter_(-1, labels.clamp(min=0).unsqueeze(-1), float("-inf"))
    return F.softmax(target, dim=-1)


def undial_target(original_logits: torch.Tensor, labels: torch.Tensor, strength: float) -> torch.Tensor:
    """UNDIAL (Dong et al. 2024): the original model's distribution with the true token's logit lowered
    by `strength` (β), the self-distillation target. Shapes as ce_unlearning_target."""
    adjusted = original_logits.float().clone()
    adjusted.scatter_add_(-1, labels.clamp(min=0).unsqueeze(-1),
                          torch.full_like(labels, -strength, dtype=adjusted.dtype).unsqueeze(-1))
    return F.softmax(adjusted, dim=-1)


def logit_flattening_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PDU's forget loss (Entesari et al. 2025): (max logit − mean logit)², averaged over the masked
    positions; zero when the next-token distribution is uniform."""
    flat = logits.float()
    margin = flat.max(-1).values - flat.mean(-1)
    return (margin ** 2)[mask].mean()


def activation_distance(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RMU's MSE (Li et al. 2024): per sequence, the mean over masked positions of the mean squared
    difference over the hidden size; then the mean over sequences. hidden, target [B, T, D], mask [B, T]."""
    squared = ((hidden.float() - target.float()) ** 2).mean(-1) * mask
    return (squared.sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def kl_all_positions(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(π_ref ‖ π_θ) averaged over every position of the batch, prompt and padding included: the
    reference code's convention (`--kl-positions all`). logits, ref_logits: [B, T, V]."""
    log_p = F.log_softmax(logits.float(), dim=-1).flatten(0, 1)
    log_ref = F.log_softmax(ref_logits.float(), dim=-1).flatten(0, 1)
    return (log_ref.exp() * (log_ref - log_p)).sum(-1).mean()


def kl_real_positions(logits: torch.Tensor, ref_logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """KL(π_ref ‖ π_θ) averaged over the positions whose next token is real (prompt and answer, padding
    skipped): distillation's per-token forward KL (UNDO). logits, ref_logits: [B, T, V]; attention_mask [B, T]."""
    return _next_token_kl(logits, ref_logits, attention_mask[:, 1:].bool())


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm of several tensors taken together, as if flattened into one vector (in fp32)."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors]))


def sam_perturbation(grads: list[torch.Tensor], rho: float) -> list[torch.Tensor]:
    """SAM's worst-case weight step ε = ρ·g/‖g‖₂ for the gradients g of the loss being minimised, the norm
    over all tensors together (Foret et al. 2021; Fan et al. 2025 apply it to the forget loss). A zero
    gradient gives a zero step (the 1e-12 floor only matters there)."""
    scale = rho / global_norm(grads).clamp(min=1e-12)
    return [g * scale.to(g.dtype) for g in grads]
