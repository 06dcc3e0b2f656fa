"""Probing a run: the same prompt through the original and the unlearned model, an answer's probability
under both, and which forget answers still leak. Used by the studio's Probe tab and by tests.

A LoRA run needs one model in memory: the original is the same model with its adapter disabled. A full
fine-tuning run loads the original beside the unlearned one. A stopped run is probed at its last checkpoint.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import Example, encode_example, prompt_text
from .errors import UnlearnError, require
from .models import inference_dtype, load_model, load_run_model, load_tokenizer, resolve_model
from .runs import RunDir
from .scoring import score_nll

ORIGINAL, UNLEARNED = "original", "unlearned"
LEAK_ROUGE = 0.5   # ROUGE-L recall of the true answer in a generation at or above which it still "leaks"


@dataclass
class Generation:
    text: str
    tokens: int


class Prober:
    """The original and the unlearned model of one run, ready for side-by-side questions."""

    def __init__(self, run_dir: str | Path, device: str = "cpu", dtype: str = "auto"):
        self.run = RunDir(run_dir)
        require(self.run.holds_run(), f"{run_dir} is not a run directory", "pick a run from the Runs tab")
        self.base_path = resolve_model(self.run.base_model())
        self.is_lora = bool(self.run.config().get("lora"))
        self.tokenizer = load_tokenizer(self.base_path)
        self.device = torch.device(device)
        weights = inference_dtype(dtype, self.device)
        # a LoRA run stays a PEFT model: its original is the same model with the adapter switched off
        self.unlearned = load_run_model(self.run, merge=False, dtype=weights).to(self.device).eval()
        self.original = None if self.is_lora else load_model(self.base_path, weights).to(self.device).eval()
        self.source = "model" if self.run.has_final_model() else self.run.latest_checkpoint().name

    def _model(self, which: str):
        """(model, context) for 'original' or 'unlearned'."""
        require(which in (ORIGINAL, UNLEARNED), f"unknown model {which!r}", "use original or unlearned")
        if which == UNLEARNED:
            return self.unlearned, nullcontext()
        if self.is_lora:
            return self.unlearned, self.unlearned.disable_adapter()
        return self.original, nullcontext()

    @torch.no_grad()
    def generate(self, prompt: str, which: str, sample: bool = False, max_new_tokens: int = 64,
                 seed: int = 0, temperature: float = 0.8) -> Generation:
        require(prompt.strip() != "", "the prompt is empty", "type a question")
        model, context = self._model(which)
        text = prompt_text(self.tokenizer, prompt)
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=not self.tokenizer.chat_template)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        torch.manual_seed(seed)
        with context:
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=sample,
                                    temperature=temperature if sample else None, top_p=0.95 if sample else None,
                                    top_k=None, pad_token_id=self.tokenizer.pad_token_id)
        new = output[0, inputs["input_ids"].shape[1]:]
        return Generation(self.tokenizer.decode(new, skip_special_tokens=True).strip(), len(new))

    def answer_probability(self, question: str, answer: str, which: str) -> float:
        """exp(-mean answer-token NLL): TOFU's per-token probability of the answer."""
        require(question.strip() and answer.strip(), "both a question and an answer are needed",
                "type the answer whose probability you want")
        encoded, _ = encode_example(self.tokenizer, Example(answer, question), 1024)
        model, context = self._model(which)
        with context:
            nll, n_tokens = score_nll(model, [encoded], self.tokenizer.pad_token_id)
        return float(torch.exp(-nll[0] / n_tokens[0]))

    def leak_report(self, examples: list[Example], max_new_tokens: int = 48) -> list[dict]:
        """Per forget QA: both models' greedy answers, ROUGE-L recall of the truth, and whether it leaks."""
        require(all(ex.is_qa for ex in examples), "the leak check needs question/answer forget data",
                "use a .jsonl/.csv forget set with question and answer fields")
        rows = []
        for ex in examples:
            before = self.generate(ex.prompt, ORIGINAL, max_new_tokens=max_new_tokens).text
            after = self.generate(ex.prompt, UNLEARNED, max_new_tokens=max_new_tokens).text
            recall_after = rouge_l_recall(ex.answer, after)
            rows.append({"question": ex.prompt, "answer": ex.answer, "original": before, "unlearned": after,
                         "rouge_before": rouge_l_recall(ex.answer, before), "rouge_after": recall_after,
                         "leaks": recall_after >= LEAK_ROUGE})
        return rows


def rouge_l_recall(reference: str, generated: str) -> float:
    """ROUGE-L recall with stemming, as TOFU scores generations."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(reference, generated)["rougeL"].recall


def load_prober(run_dir: str | Path, device: str = "cpu", dtype: str = "auto") -> Prober:
    try:
        return Prober(run_dir, device, dtype)
    except (OSError, KeyError) as exc:
        raise UnlearnError(f"the run in {run_dir} could not be loaded for probing: {exc}",
                           "check that the run finished or has a checkpoint") from None
