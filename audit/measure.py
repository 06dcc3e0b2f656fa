"""What the audit measures of a model on a set: the forget-answer NLL (pooled over answer tokens),
probability and ROUGE-L recall of the greedy answer, per example too, so that every figure gets a bootstrap
interval. Only what the audit reads is scored (no memorisation or fluency passes, which `unlearn eval`
adds), in batches sorted by length. The unattacked models' figures on a set are measured once per audit."""
from __future__ import annotations

import math

import numpy as np

BASE_STAGES = ("original", "unlearned")


def score_each(model, tokenizer, examples: list, settings, name: str, answers: bool = True) -> tuple[dict, dict]:
    """(figures, per-example lists {"nll": summed answer NLL, "tokens", "prob", "rougeL" on QA examples});
    `answers=False` skips the greedy answers and so ROUGE-L (teacher-forced figures only)."""
    from core.evaluation.probes import answer_nll, generate
    from core.evaluation.text_metrics import rouge_recall

    sums, counts = answer_nll(model, tokenizer, examples, settings.batch_size, f"{name}: scoring")
    each = {"nll": sums, "tokens": counts, "prob": [math.exp(-s / n) for s, n in zip(sums, counts)]}
    figures = {"nll": sum(sums) / max(sum(counts), 1), "prob": float(np.mean(each["prob"]))}
    qa = [ex for ex in examples if ex.is_qa and answers]
    if qa:
        generated = generate(model, tokenizer, [ex.prompt for ex in qa], settings.max_new_tokens,
                             settings.generation_batch, f"{name}: generating")
        each["rougeL"] = rouge_recall(generated, [ex.answer for ex in qa])["rougeL_recall"]
        figures["rougeL"] = float(np.mean(each["rougeL"]))
    return figures, each


class Scorer:
    """Scores models for one audit: `models` (stage -> (model, tokenizer)) are the unattacked ones whose
    figures on a set are measured once (`baseline`) and reused by every attack and seed."""

    def __init__(self, models: dict, settings):
        self.models, self.settings, self.memo = models, settings, {}

    def score(self, model, tokenizer, examples, name, answers: bool = True):
        return score_each(model, tokenizer, examples, self.settings, name, answers)

    def measure(self, model, tokenizer, examples, name) -> dict:
        return self.score(model, tokenizer, examples, name)[0]

    def _baseline(self, name: str, examples, stages) -> dict:
        for stage in stages:
            if (name, stage) not in self.memo:
                model, tokenizer = self.models[stage]
                self.memo[name, stage] = self.score(model, tokenizer, examples, f"{stage} {name}")
        return {stage: self.memo[name, stage] for stage in stages}

    def baseline(self, name: str, examples, stages=BASE_STAGES) -> dict:
        """{stage: figures} of the unattacked models on the set `name` (one name, one set of examples)."""
        return {stage: scored[0] for stage, scored in self._baseline(name, examples, stages).items()}

    def baseline_each(self, name: str, examples, stages=BASE_STAGES) -> dict:
        """{stage: per-example lists}, as `baseline`."""
        return {stage: scored[1] for stage, scored in self._baseline(name, examples, stages).items()}
