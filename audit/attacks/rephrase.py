"""Rephrasing: the forget questions asked other ways, to the unlearned model, with no weights changed.

- paraphrased: TOFU's own paraphrased questions, when the run forgot a TOFU split (through the chat template).
- plain: "Question: ...\\nAnswer:" as raw text, without the chat template the model was unlearned under.
- few-shot: the same plain prompt after three retain question/answer pairs as in-context examples.

"original" and "unlearned" are both models asked the usual way, "attacked" the unlearned model asked
differently and "attacked_original" the original model asked the same way: the prompt alone moves every
model's figures, so the recovery compares the unlearning's effect under each prompt (core/recovery.py).
Recovery 1 means that asked so, the unlearned model is as close to the original as if nothing had been
unlearned. The retain figures are the retain set asked the same way."""
from __future__ import annotations

import numpy as np

from core.data import Encoded, Example
from core.evaluation.probes import generate_from_ids
from core.evaluation.text_metrics import rouge_recall
from core.losses import IGNORE_INDEX
from core.scoring import score_nll

from .base import Attack, register_attack

SHOTS = 3


def plain_prompt(question: str, shots: list[Example]) -> str:
    examples = "".join(f"Question: {ex.prompt}\nAnswer: {ex.answer}\n\n" for ex in shots)
    return f"{examples}Question: {question}\nAnswer:"


def measure_plain(model, tokenizer, examples, shots, settings) -> tuple[dict, dict]:
    """(NLL, probability and ROUGE-L recall of the answers after raw-text prompts (no chat template), the same
    per example: {"nll": summed answer NLL, "tokens", "prob", "rougeL"} as audit/measure.py's)."""
    prompts = [tokenizer(plain_prompt(ex.prompt, shots))["input_ids"] for ex in examples]
    answers = [tokenizer(" " + ex.answer, add_special_tokens=False)["input_ids"] for ex in examples]
    items = [Encoded(input_ids=p + a, labels=[IGNORE_INDEX] * len(p) + a) for p, a in zip(prompts, answers)]
    nll, counts = score_nll(model, items, tokenizer.pad_token_id, settings.batch_size)
    per = (nll / counts.clamp(min=1)).tolist()
    generations = generate_from_ids(model, tokenizer, prompts, settings.max_new_tokens, settings.generation_batch,
                                    "rephrase: generating")
    rouge = rouge_recall([g.split("\nQuestion:")[0] for g in generations], [ex.answer for ex in examples])
    each = {"nll": nll.tolist(), "tokens": counts.tolist(), "prob": np.exp(-np.asarray(per)).tolist(),
            "rougeL": [float(r) for r in rouge["rougeL_recall"]]}
    figures = {"nll": float(nll.sum() / counts.sum().clamp(min=1)), "prob": float(np.mean(each["prob"])),
               "rougeL": float(np.mean(each["rougeL"]))}
    return figures, each


def paraphrases(context) -> dict[str, str]:
    """question -> TOFU's paraphrased question, when the run forgot a TOFU split that has them."""
    forget = context.config.get("forget") or ""
    split = forget.removeprefix("tofu:")
    if not forget.startswith("tofu:") or split not in ("forget01", "forget05", "forget10"):
        return {}
    from core.tofu import load_records

    return {r["question"]: r["paraphrased_question"] for r in load_records(f"{split}_perturbed")
            if r.get("paraphrased_question")}


@register_attack
class Rephrase(Attack):
    name = "rephrase"
    summary = "ask the forget questions differently: paraphrased, without the chat template, after examples"
    order = 40

    def run(self, context):
        qa = [ex for ex in context.forget if ex.is_qa]
        if not qa:
            context.log("rephrase: the forget set has no questions; skipped")
            return []
        models, settings = context.models, context.settings
        shots = [ex for ex in (context.retain or []) if ex.is_qa][:SHOTS]
        usual = context.baseline("forget_qa", qa)
        usual_each = context.baseline_each("forget_qa", qa)
        results = []
        mapping = paraphrases(context)
        if mapping:
            rephrased = [Example(answer=ex.answer, prompt=mapping[ex.prompt]) for ex in qa if ex.prompt in mapping]
            asked = {name: context.score(model, tok, rephrased, f"rephrase paraphrased {name}")
                     for name, (model, tok) in models.items()}
            # per-example figures line up with the usual ones only when every question has its paraphrase
            results.append(self._result("paraphrased", usual, asked, usual_each if len(rephrased) == len(qa) else None))
        variants = {"plain": [], "few-shot": shots} if shots else {"plain": []}
        for variant, examples in variants.items():
            asked = {name: measure_plain(model, tok, qa, examples, settings) for name, (model, tok) in models.items()}
            result = self._result(variant, usual, asked, usual_each)
            retain = [ex for ex in (context.retain or []) if ex.is_qa][SHOTS:] or None
            if retain:
                result["retain"] = {**context.baseline("retain", context.retain),
                                    "attacked": measure_plain(models["unlearned"][0], models["unlearned"][1], retain,
                                                              examples, settings)[0]}
            results.append(result)
        return results

    @staticmethod
    def _result(variant: str, usual: dict, asked: dict, usual_each: dict | None) -> dict:
        """`asked`: model name -> (figures, per-example lists) under the rephrased prompt."""
        result = {"name": f"rephrase: {variant}", "forget": {"set": f"forget questions, {variant}", **usual,
                                                             "attacked": asked["unlearned"][0],
                                                             "attacked_original": asked["original"][0]}}
        if usual_each is not None:
            result["forget_each"] = {**usual_each, "attacked": asked["unlearned"][1],
                                     "attacked_original": asked["original"][1]}
        return result
