"""The quick suite: your own forget (and retain) data, no perturbed answers needed; the original model
(before) against the unlearned one (after): answer NLL and probability, ROUGE-L recall of greedy answers,
fluency, repetition, Exact Memorisation and Extraction Strength."""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from ...data import Example
from ...runs import write_json_atomic
from ...scoring import describe_scored_on, prompt_form, scored_on
from ..report import prepare_out, table, title, write_summary
from ..scores import Settings, indexed, set_scores
from .base import EvalContext, Need, Suite, register_suite

LOG = "quick_log.json"
FIGURES = ("nll", "prob", "rougeL_recall", "fluency", "repetition", "exact_memorisation", "extraction_strength")
CHARTED = (("prob", "Prob."), ("rougeL_recall", "ROUGE-L"), ("fluency", "fluency"))


@register_suite
class QuickSuite(Suite):
    name = "quick"
    summary = "your forget/retain data, before vs after: NLL, probability, ROUGE-L, fluency"
    needs = (Need("forget", "forget data", required=True, from_run=True),
             Need("retain", "retain data", from_run=True))

    def run(self, context: EvalContext) -> dict:
        forget = context.examples("forget", self)
        retain = context.examples("retain", self) if context.data.get("retain") else None
        return run_quick(context.loaded, context.out, forget, retain, context.settings, context.original,
                         context.original_name)

    def table(self, summary: dict) -> str:
        stages = [s for s in ("before", "after") if s in summary]
        sets = list(summary[stages[-1]])
        header = ["metric"] + [f"{name} {stage}" for name in sets for stage in stages]
        rows = [[key] + [summary[stage][name].get(key) for name in sets for stage in stages] for key in FIGURES]
        basis = f"\n\nNLL and probability over the {describe_scored_on(summary['scored_on'])}." \
            if "scored_on" in summary else ""
        return f"{title(summary, 'quick')}\n\n{table(header, rows)}{basis}"

    def chart(self, summary: dict) -> list[dict]:
        stages = {"before": "original", "after": "unlearned"}
        return [{"figure": f"{name} {label}", "model": stages[stage], "value": summary[stage][name][key]}
                for stage in stages if stage in summary for name in summary[stage]
                for key, label in CHARTED if key in summary[stage][name]]


def run_quick(loaded, out: Path, forget: list[Example], retain: list[Example] | None, settings: Settings,
              original=None, original_name: str | None = None) -> dict:
    """Scores of the model (and of the original model, when known) on forget and retain data."""
    settings.validate()
    started = time.time()
    out = prepare_out(out)
    models = {"after": (loaded.model, loaded.tokenizer)}
    if original is not None:
        models = {"before": original, **models}
    reference = original or models["after"]
    sets = {"forget": forget, **({"retain": retain} if retain else {})}
    summary, per_sample = {"suite": "quick", "model": loaded.source, "dtype": loaded.dtype}, {}
    for stage, (model, tokenizer) in models.items():
        summary[stage], per_sample[stage] = {}, {}
        for name, examples in sets.items():
            scores, per = set_scores(model, tokenizer, examples, settings, reference, f"{stage} {name}")
            summary[stage][name], per_sample[stage][name] = scores, {k: indexed(v) for k, v in per.items()}
    summary["scored_on"] = scored_on({name: len(examples[:settings.max_samples]) for name, examples in sets.items()},
                                     loaded.dtype, prompt_form(loaded.tokenizer))
    summary["settings"] = {**asdict(settings), "original": original_name,
                           "fluency_reference": original_name or "the evaluated model itself"}
    summary["wall_seconds"] = round(time.time() - started, 1)
    write_json_atomic(out / LOG, {"dtype": loaded.dtype, **per_sample})
    write_summary(out, summary, QuickSuite().table(summary))
    return summary
