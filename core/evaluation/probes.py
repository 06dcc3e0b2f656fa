"""What the metrics need from a model: answer NLL, per-token log-probabilities and greedy generations,
batched, under no_grad, with a progress bar. Prompts go through `core.data` (the chat template), so a
model is evaluated on exactly the text it was trained on."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..data import Encoded, Example, encode_example, pad_batch, prompt_text
from ..errors import require
from ..scoring import forward_logits, score_nll

EVAL_MAX_LENGTH = 512  # TOFU QA pairs are < 300 tokens: nothing is truncated


def encode_pairs(tokenizer, pairs, max_length: int = EVAL_MAX_LENGTH) -> list[Encoded]:
    """(question, answer) pairs or Examples as answer-supervised sequences; an unscorable one is an error,
    never silently skipped (per-sample logs must line up with the data)."""
    items = []
    for index, pair in enumerate(pairs):
        example = pair if isinstance(pair, Example) else Example(answer=pair[1], prompt=pair[0])
        encoded, _ = encode_example(tokenizer, example, max_length)
        require(encoded is not None, f"sample {index} leaves no answer token within {max_length} tokens",
                "shorten its question")
        items.append(encoded)
    return items


def _by_length(items: list[Encoded]) -> list[int]:
    # Sorting by length makes batches of similar width: far less padding on CPU.
    return sorted(range(len(items)), key=lambda i: len(items[i].input_ids))


def answer_nll(model, tokenizer, pairs, batch_size: int = 8, desc: str = "scoring") -> tuple[list[float], list[int]]:
    """Summed answer-token NLL and answer-token count per pair, in input order."""
    items = encode_pairs(tokenizer, pairs)
    order = _by_length(items)
    sums, counts = [0.0] * len(items), [0] * len(items)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, unit="batch"):
        chunk = order[start:start + batch_size]
        nll, n_tokens = score_nll(model, [items[i] for i in chunk], tokenizer.pad_token_id, batch_size)
        for row, index in enumerate(chunk):
            sums[index], counts[index] = float(nll[row]), int(n_tokens[row])
    return sums, counts


def answer_token_logprobs(model, tokenizer, pairs, batch_size: int = 8, desc: str = "token log-probs") -> list[list[float]]:
    """Log-probability of every answer token (for min-k% probability), in input order."""
    return [stats.logprobs for stats in token_statistics(model, tokenizer, pairs, batch_size, desc)]


@dataclass
class TokenStats:
    """What membership attacks and memorisation scores read of one answer, token by token (the tokens that
    predict answer tokens, in order): log p of the true token, the mean and variance of log p over the
    vocabulary (Min-K%++), and whether the greedy choice was the true token."""
    logprobs: list[float]
    vocab_mean: list[float]
    vocab_var: list[float]
    greedy_hit: list[bool]

    @property
    def nll(self) -> float:
        """Mean answer-token NLL (every answer token)."""
        return -sum(self.logprobs) / max(len(self.logprobs), 1)


@torch.no_grad()
def token_statistics(model, tokenizer, pairs, batch_size: int = 8, desc: str = "token statistics") -> list[TokenStats]:
    """TokenStats of every pair, in input order, from one batched forward per batch."""
    items = encode_pairs(tokenizer, pairs)
    order = _by_length(items)
    result: list[TokenStats | None] = [None] * len(items)
    device = next(model.parameters()).device
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, unit="batch"):
        chunk = order[start:start + batch_size]
        part = {k: v.to(device) for k, v in pad_batch([items[i] for i in chunk], tokenizer.pad_token_id).items()}
        logits, labels = forward_logits(model, part)
        logp = torch.log_softmax(logits[:, :-1].float(), -1)          # [B, K-1, V]
        targets = labels[:, 1:]
        mask = targets != -100
        picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        probs = logp.exp()
        mean = (probs * logp).sum(-1)
        var = (probs * logp.square()).sum(-1) - mean.square()
        hit = logp.argmax(-1) == targets
        for row, index in enumerate(chunk):
            keep = mask[row]
            result[index] = TokenStats(picked[row][keep].tolist(), mean[row][keep].tolist(), var[row][keep].tolist(),
                                       hit[row][keep].tolist())
    return result


@torch.no_grad()
def generate(model, tokenizer, questions: list[str], max_new_tokens: int, batch_size: int = 8,
             desc: str = "generating") -> list[str]:
    """Greedy answers to questions (through the chat template), decoded without special tokens, in input order."""
    prompts = [tokenizer(prompt_text(tokenizer, q), add_special_tokens=not tokenizer.chat_template)["input_ids"]
               for q in questions]
    return generate_from_ids(model, tokenizer, prompts, max_new_tokens, batch_size, desc)


@torch.no_grad()
def generate_from_ids(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 8,
                      desc: str = "generating") -> list[str]:
    """Greedy continuations of token-id prompts (left-padded batches, sorted by length), in input order."""
    require(max_new_tokens >= 1, f"max_new_tokens must be at least 1, got {max_new_tokens}")
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers = [""] * len(prompts)
    eos = tokenizer.eos_token_id
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, unit="batch"):
        chunk = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, index in enumerate(chunk):
            n = len(prompts[index])
            ids[row, width - n:] = torch.tensor(prompts[index])
            mask[row, width - n:] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
        texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        for row, index in enumerate(chunk):
            answers[index] = texts[row].strip()
    return answers
