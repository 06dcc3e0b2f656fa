"""The quick suite: your own forget (and retain) data, the original model (before) against the unlearned
one (after): answer NLL and probability, ROUGE-L recall of greedy answers, fluency, repetition."""
from __future__ import annotations

from .. import evaluator
from ..report import quick_table
from .base import EvalContext, Need, Suite, register_suite

CHARTED = (("prob", "Prob."), ("rougeL_recall", "ROUGE-L"), ("fluency", "fluency"))


@register_suite
class QuickSuite(Suite):
    name = "quick"
    summary = "your forget/retain data, before vs after: NLL, probability, ROUGE-L, fluency"
    needs = (Need("forget", "forget data", required=True, from_run=True),
             Need("retain", "retain data", from_run=True))

    def run(self, context: EvalContext) -> dict:
        from ...data import load_examples

        forget = load_examples(context.require_data("forget", self), "forget")
        retain = load_examples(context.data["retain"], "retain") if context.data.get("retain") else None
        return evaluator.run_quick(context.loaded, context.out, forget, retain, context.settings, context.original,
                                   context.original_name)

    def table(self, summary: dict) -> str:
        return quick_table(summary)

    def chart(self, summary: dict) -> list[dict]:
        stages = {"before": "original", "after": "unlearned"}
        return [{"figure": f"{name} {label}", "model": stages[stage], "value": summary[stage][name][key]}
                for stage in stages if stage in summary for name in summary[stage]
                for key, label in CHARTED if key in summary[stage][name]]
