"""Evaluation: TOFU metrics, fluency and membership inference, as plain functions (`tofu_metrics`,
`text_metrics`, `mia`), model probes (`probes`), scoring shared by the suites (`scores`), the output files
(`report`), the suites, one module each (`suites/`: tofu, quick, muse, mcq), the driver that runs one
(`evaluator.evaluate`) and the CLI (`cli`).

Importing this package loads no model and no torch-heavy module beyond what the submodules need."""
from .mia import auc, min_k_score, privacy_leakage
from .text_metrics import fluency, repetition, rouge_recall
from .tofu_metrics import aggregate, forget_quality, model_utility, tofu_aggregate, truth_ratio_score, truth_ratios

__all__ = ["aggregate", "auc", "fluency", "forget_quality", "min_k_score", "model_utility", "privacy_leakage",
           "repetition", "rouge_recall", "tofu_aggregate", "truth_ratio_score", "truth_ratios"]
