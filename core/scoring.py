"""Running a causal LM on padded batches: the forward used in training, and no-grad NLL scoring used
for the cached reference, the before/after summary and evaluation."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from .data import Encoded, pad_batch
from .losses import IGNORE_INDEX, sequence_nll


def logits_to_keep(labels: torch.Tensor) -> int:
    """How many trailing positions reach back to the one that predicts the batch's first label."""
    supervised = (labels != IGNORE_INDEX).any(0).nonzero()
    first = int(supervised[0]) if len(supervised) else 1
    return labels.shape[1] - max(first - 1, 0)


def forward_logits(model, part: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits from the first supervised position on, and the labels they line up with.

    The prompt's logits are never needed, and with a 49k vocabulary they dominate activation memory.
    """
    keep = logits_to_keep(part["labels"])
    logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"], logits_to_keep=keep).logits
    return logits, part["labels"][:, -keep:]


@torch.no_grad()
def score_nll(model, items: list[Encoded], pad_id: int, batch_size: int = 8, autocast=nullcontext):
    """Summed answer NLL [N] and answer-token counts [N] for each item, in order (model in eval mode)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums, counts = [], []
    try:
        for start in range(0, len(items), batch_size):
            part = {k: v.to(device) for k, v in pad_batch(items[start:start + batch_size], pad_id).items()}
            with autocast():
                logits, labels = forward_logits(model, part)
            nll, n_tokens = sequence_nll(logits, labels)
            sums.append(nll.float().cpu())
            counts.append(n_tokens.cpu())
    finally:
        model.train(was_training)
    return torch.cat(sums), torch.cat(counts)


def mean_token_nll(model, items: list[Encoded], pad_id: int, batch_size: int = 8, autocast=nullcontext) -> float:
    nll, n_tokens = score_nll(model, items, pad_id, batch_size, autocast)
    return float(nll.sum() / n_tokens.sum().clamp(min=1))


def scored_on(examples: dict[str, int], dtype: str, prompts: str) -> dict:
    """What NLL figures were computed on — how many examples of each set (the first N), the precision and
    the prompt form — written beside them wherever they are shown (run summary, eval, export parity, audit,
    studio, card). The same model on the same examples in the same precision and prompts gives the same
    figure in every command; when two figures differ, this says why."""
    return {"examples": dict(examples), "dtype": dtype, "prompts": prompts}


def describe_scored_on(basis: dict) -> str:
    """'first 32 forget / 32 retain examples, float32, chat-template prompts'."""
    sets = " / ".join(f"{n} {name}" for name, n in basis["examples"].items())
    return f"first {sets} examples, {basis['dtype']}, {basis['prompts']} prompts"


def prompt_form(tokenizer) -> str:
    """How question/answer pairs are put to the model (core.data.encode_example)."""
    return "chat-template" if getattr(tokenizer, "chat_template", None) else "plain"
