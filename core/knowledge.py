"""Before unlearning: does the model know the forget data at all?

A model can only forget what it knows. Facts it never saw (a person invented yesterday) score as badly as
any other made-up facts, and "unlearning" them only pushes unrelated likelihood down (a user once saw the
forget NLL go 4.66 -> 9.63 on facts the model never knew, and nothing said so).

The check: every question/answer forget example is scored twice under the original model, once with its true
answer and once with its key facts (numbers, and capitalised words the question does not contain) replaced
by another example's, in order. A model that knows the facts finds the true answers clearly more likely; one
that does not finds both about as unlikely. Reported: the mean gap in answer NLL (swapped − true, nats per
token) and the share of examples whose true answer is the likelier."""
from __future__ import annotations

import re

FACT = re.compile(r"\b(?:\d[\d\-./:,]*\d|\d|[A-Z][a-zA-Z'\-]+)\b")
KNOWS_GAP = 0.1          # nats per answer token
KNOWS_SHARE = 0.6


def key_facts(question: str, answer: str) -> list[tuple[int, int]]:
    """Spans of the answer's facts: numbers, and capitalised words (not its first word) absent from the question."""
    asked = set(re.findall(r"[a-z0-9]+", question.lower()))
    spans = []
    for match in FACT.finditer(answer):
        word = match.group()
        asked_already = all(part in asked for part in re.findall(r"[a-z0-9]+", word.lower()))
        if match.start() == 0 or (not word[0].isdigit() and asked_already):
            continue
        spans.append(match.span())
    return spans


def swapped_answers(examples: list) -> list[tuple[int, str]]:
    """(index, answer with its facts replaced by the next example's facts) for every example that has facts
    and a neighbour with facts that differ."""
    facts = [[ex.answer[a:b] for a, b in key_facts(ex.prompt, ex.answer)] for ex in examples]
    donors = [i for i, f in enumerate(facts) if f]
    swapped = []
    for position, index in enumerate(donors):
        donor = facts[donors[(position + 1) % len(donors)]]
        spans = key_facts(examples[index].prompt, examples[index].answer)
        text, shift = examples[index].answer, 0
        for k, (start, end) in enumerate(spans):
            new = donor[k % len(donor)]
            text = text[:start + shift] + new + text[end + shift:]
            shift += len(new) - (end - start)
        if text != examples[index].answer:
            swapped.append((index, text))
    return swapped


def knowledge_check(score, examples: list) -> dict:
    """`score(pairs)` -> per-pair mean answer NLL under the original model. The check's result, with a verdict."""
    qa = [ex for ex in examples if ex.is_qa]
    if len(qa) < 2:
        return {"verdict": "not measured", "reason": "it needs two or more question/answer forget examples"}
    swapped = swapped_answers(qa)
    if len(swapped) < 2:
        return {"verdict": "not measured", "reason": "too few answers hold facts (numbers, names) to swap"}
    true_nll = score([(qa[i].prompt, qa[i].answer) for i, _ in swapped])
    swapped_nll = score([(qa[i].prompt, text) for i, text in swapped])
    gaps = [s - t for s, t in zip(swapped_nll, true_nll)]
    gap = sum(gaps) / len(gaps)
    share = sum(g > 0 for g in gaps) / len(gaps)
    knows = gap >= KNOWS_GAP and share >= KNOWS_SHARE
    return {"verdict": "knows the forget data" if knows else "does not appear to know the forget data",
            "gap_nats_per_token": round(gap, 4), "share_true_likelier": round(share, 4), "examples": len(gaps),
            "rule": f"knows when the swapped-facts answers are at least {KNOWS_GAP} nats/token less likely on "
                    f"average and the true answer is the likelier in at least {KNOWS_SHARE:.0%} of examples"}


def warning(check: dict) -> str | None:
    """The plain sentence to show when the model does not appear to know what it is asked to forget."""
    if not check.get("verdict", "").startswith("does not"):
        return None
    return (f"the original model does not appear to know the forget data: its true answers are not clearly "
            f"likelier than the same answers with other examples' facts swapped in (gap {check['gap_nats_per_token']:.3f} "
            f"nats/token, true answer likelier in {check['share_true_likelier']:.0%} of {check['examples']}; "
            f"the check asks for at least {KNOWS_GAP} and {KNOWS_SHARE:.0%}). "
            "Unlearning can then only push unrelated likelihood down; check that this is the right model and data.")
