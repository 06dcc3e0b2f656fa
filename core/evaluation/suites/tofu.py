"""TOFU (Maini et al. 2024): its four evaluation sets and metrics (Probability, ROUGE-L, Truth Ratio, Forget
Quality against a retain model, Model Utility), fluency, and min-k% membership inference."""
from __future__ import annotations

from ...methods.params import Param
from .. import evaluator
from ..report import tofu_table
from .base import EvalContext, Need, Suite, register_suite

SPLITS = ("forget01", "forget05", "forget10")


@register_suite
class TofuSuite(Suite):
    name = "tofu"
    summary = "TOFU's four sets and metrics: Forget Quality, Model Utility, Truth Ratio, ROUGE, fluency, MIA"
    needs = (Need("retain_logs", "a retain model's eval directory or eval_log_aggregated.json (Forget Quality, "
                                 "PrivLeak)"),
             Need("holdout", "data never trained on (file or tofu: split) for membership inference"))
    options = (Param("attacks", "", "more membership attacks beside min-k%, comma-separated (loss, zlib, "
                                    "reference, min_k_pp, gradnorm), with --holdout", "open-unlearning"),
               Param("forget_split", "auto", "which TOFU forget split to evaluate (auto: the run's tofu:forgetNN, "
                                             "else forget01)", "TOFU", choices=("auto", *SPLITS)),)
    max_samples = 300      # TOFU's ds_size
    max_new_tokens = 200   # TOFU generates up to 200 tokens

    def run(self, context: EvalContext) -> dict:
        from ...data import load_examples

        chosen = context.options["forget_split"]
        split = chosen if chosen != "auto" else _run_split(context.loaded) or "forget01"
        holdout = context.data.get("holdout")
        from ..attacks import check_attacks

        extra = tuple(check_attacks(context.options["attacks"].split(",")))
        return evaluator.run_tofu(context.loaded, context.out, context.settings, split, context.original,
                                  load_examples(holdout, "holdout") if holdout else None,
                                  context.data.get("retain_logs"), reference_name=context.original_name,
                                  extra_attacks=extra)

    def table(self, summary: dict) -> str:
        return tofu_table(summary)


def _run_split(loaded) -> str | None:
    forget = (loaded.run_config or {}).get("forget", "")
    name = forget.removeprefix("tofu:") if forget.startswith("tofu:") else ""
    return name if name in SPLITS else None
