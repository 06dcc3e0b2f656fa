"""Scoring that more than one suite (and the audit) uses: the limits of one evaluation (`Settings`), one set's
answer NLL, Prob., memorisation, ROUGE-L and fluency (`set_scores`), and fluency of generations
(`fluency_log`). Suites import this module; it imports no suite."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data import Example
from ..errors import require
from . import memorisation, text_metrics
from .probes import answer_nll, generate, token_statistics


@dataclass
class Settings:
    max_samples: int = 300        # TOFU's ds_size: the first 300 samples of every set
    max_new_tokens: int = 200     # TOFU generates up to 200 tokens
    batch_size: int = 8
    generate_batch_size: int | None = None   # answers generated together; None: batch_size

    @property
    def generation_batch(self) -> int:
        return self.generate_batch_size or self.batch_size

    def validate(self) -> None:
        require(self.max_samples >= 1, f"max_samples must be at least 1, got {self.max_samples}", "use --max-samples 300")
        require(self.max_new_tokens >= 1, f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        require(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}", "use --batch-size 8")
        require(self.generate_batch_size is None or self.generate_batch_size >= 1,
                f"generate_batch_size must be at least 1, got {self.generate_batch_size}",
                "use --generate-batch-size 32")


def set_scores(model, tokenizer, examples: list[Example], settings: Settings, reference, name: str) -> tuple[dict, dict]:
    """Aggregate and per-sample scores of one set: NLL and Prob. on all, ROUGE-L and fluency on QA."""
    require(len(examples) > 0, f"the {name} set is empty", "give at least one example")
    examples = examples[:settings.max_samples]
    sums, counts = answer_nll(model, tokenizer, examples, settings.batch_size, f"{name}: scoring")
    per = {"avg_loss": [s / n for s, n in zip(sums, counts)]}
    scores = {"nll": sum(sums) / max(sum(counts), 1), "prob": float(np.mean(np.exp(-np.asarray(per["avg_loss"]))))}
    stats = token_statistics(model, tokenizer, examples, settings.batch_size, f"{name}: memorisation")
    per["exact_memorisation"] = [memorisation.exact_memorisation(s) for s in stats]
    per["extraction_strength"] = [memorisation.extraction_strength(s) for s in stats]
    scores.update(exact_memorisation=float(np.mean(per["exact_memorisation"])),
                  extraction_strength=float(np.mean(per["extraction_strength"])))
    qa = [ex for ex in examples if ex.is_qa]
    if qa:
        generations = generate(model, tokenizer, [ex.prompt for ex in qa], settings.max_new_tokens,
                               settings.batch_size, f"{name}: generating")
        per["generated_text"] = generations
        per["rougeL_recall"] = text_metrics.rouge_recall(generations, [ex.answer for ex in qa])["rougeL_recall"]
        per.update(fluency_log(reference, [ex.prompt for ex in qa], generations, settings.batch_size, name))
        scores.update(rougeL_recall=float(np.mean(per["rougeL_recall"])), fluency=float(np.mean(per["fluency"])),
                      repetition=float(np.mean(per["repetition"])))
    scores["samples"] = len(examples)
    return scores, per


def fluency_log(reference, questions: list[str], generations: list[str], batch_size: int, name: str) -> dict:
    """Per-sample fluency of generations scored by the reference (original) model; see text_metrics."""
    model, tokenizer = reference
    sums, counts = answer_nll(model, tokenizer, list(zip(questions, generations)), batch_size, f"{name}: fluency")
    nll = [s / n for s, n in zip(sums, counts)]
    return {"fluency": [text_metrics.fluency(g, x) for g, x in zip(generations, nll)],
            "repetition": [text_metrics.repetition(g) for g in generations],
            "generation_nll": nll}


def indexed(values: list) -> dict:
    """A per-sample list as TOFU's logs keep it: {"0": first, "1": second, ...}."""
    return {str(i): v for i, v in enumerate(values)}
