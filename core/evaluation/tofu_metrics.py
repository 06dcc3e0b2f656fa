"""TOFU's aggregate figures from per-sample eval logs: plain functions on numbers, no model.

The formulas follow `aggregate_eval_stat.py` of locuslab/tofu (commit bdc209e), which is what produces the
published Forget Quality / Model Utility numbers:

- Prob. (Retain, Forget): mean of exp(-avg_gt_loss), avg_gt_loss being the mean answer-token NLL.
- Prob. (Real Authors, Real World): the true answer's probability normalised over the true and the
  perturbed answers, exp(-l_true) / (exp(-l_true) + sum_j exp(-l_j)), averaged.
- ROUGE: mean ROUGE-L recall of the greedy generations.
- Truth Ratio: x = P(perturbed) / P(paraphrased) with P = exp(-mean token NLL) and the perturbed answers'
  losses averaged first (a geometric mean of their probabilities); reported as mean(min(x, 1/x)) on the
  forget set and mean(max(0, 1 - x)) elsewhere.
- Forget Quality: p-value of the two-sample KS test between the forget-set truth ratios of the model and
  of a retain model.
- Model Utility: harmonic mean of the nine Retain / Real Authors / Real World figures.

Names are TOFU's task names ("Retain", "Real Authors", "Real World", "Forget") followed by the metric
("ROUGE", "Prob.", "Truth Ratio"), e.g. "Real Authors Prob.", "Retain Truth Ratio".
"""
from __future__ import annotations

import numpy as np

from ..errors import UnlearnError, require

# eval file -> TOFU's task name, in TOFU's order
TASKS = {
    "eval_real_author_wo_options.json": "Real Authors",
    "eval_real_world_wo_options.json": "Real World",
    "eval_log.json": "Retain",
    "eval_log_forget.json": "Forget",
}
FORGET_FILE = "eval_log_forget.json"
METRICS = ("ROUGE", "Prob.", "Truth Ratio")
# Retain and Forget are scored on their own answer; the two general-knowledge sets on the options.
NORMALISED_FILES = ("eval_real_author_wo_options.json", "eval_real_world_wo_options.json")


# ---------------------------------------------------------------- per-sample quantities

def qa_probability(avg_gt_loss) -> float:
    """Mean of exp(-mean answer-token NLL)."""
    losses = _vector(avg_gt_loss, "avg_gt_loss")
    return float(np.mean(np.exp(-losses)))


def normalised_probability(avg_gt_loss, avg_perturb_loss) -> float:
    """Mean probability of the true answer among {true, perturbed...}, each scored per token."""
    true = np.exp(-_vector(avg_gt_loss, "avg_gt_loss"))
    false = np.exp(-_matrix(avg_perturb_loss, "average_perturb_loss"))
    _same_length(true, false, "avg_gt_loss", "average_perturb_loss")
    return float(np.mean(true / (true + false.sum(-1))))


def truth_ratios(avg_paraphrased_loss, avg_perturb_loss) -> np.ndarray:
    """Per sample x = P(perturbed) / P(paraphrased) = exp(l_para - mean_j l_pert_j)."""
    para = _vector(avg_paraphrased_loss, "avg_paraphrased_loss")
    pert = _matrix(avg_perturb_loss, "average_perturb_loss")
    _same_length(para, pert, "avg_paraphrased_loss", "average_perturb_loss")
    return np.exp(para - pert.mean(-1))


def truth_ratio_score(ratios, forget: bool) -> float:
    """Forget: mean(min(x, 1/x)) (1 = the model cannot tell true from false, as if never trained).
    Others: mean(max(0, 1 - x)) (1 = the true answer is far more likely than the perturbed ones)."""
    x = _vector(ratios, "truth ratios")
    if forget:
        return float(np.mean(np.minimum(x, 1 / x)))
    return float(np.mean(np.maximum(0, 1 - x)))


def forget_quality(model_ratios, retain_ratios) -> dict:
    """KS test between the forget-set truth ratios of the model and of the retain model."""
    from scipy.stats import ks_2samp

    result = ks_2samp(_vector(model_ratios, "model truth ratios"), _vector(retain_ratios, "retain truth ratios"))
    return {"Forget Quality": float(result.pvalue), "KS Test Forget": float(result.statistic)}


def model_utility(figures) -> float:
    """Harmonic mean; any zero figure makes it 0 (scipy's hmean convention)."""
    values = _vector(figures, "model utility figures")
    require(bool(np.all(values >= 0)), f"model utility needs non-negative figures, got {values.tolist()}")
    if np.any(values == 0):
        return 0.0
    return float(len(values) / np.sum(1 / values))


# ---------------------------------------------------------------- whole logs

def task_figures(log: dict, eval_file: str) -> dict:
    """ROUGE, Prob. and Truth Ratio of one eval file's per-sample log."""
    name = TASKS[eval_file]
    where = f"{eval_file}"
    gt = column(log, "avg_gt_loss", where)
    if eval_file in NORMALISED_FILES:
        prob = normalised_probability(gt, column(log, "average_perturb_loss", where))
    else:
        prob = qa_probability(gt)
    ratios = truth_ratios(column(log, "avg_paraphrased_loss", where), column(log, "average_perturb_loss", where))
    found = {}
    if eval_file != FORGET_FILE or "rougeL_recall" in log:   # Forget ROUGE is not in Model Utility: may be skipped
        found[f"{name} ROUGE"] = float(np.mean(_vector(column(log, "rougeL_recall", where), "rougeL_recall")))
    return {**found, f"{name} Prob.": prob,
            f"{name} Truth Ratio": truth_ratio_score(ratios, forget=eval_file == FORGET_FILE)}


def aggregate(logs: dict) -> dict:
    """The twelve figures and Model Utility of one aggregated eval log (four files keyed by name)."""
    missing = [f for f in TASKS if f not in logs]
    require(not missing, f"the eval log lacks {', '.join(missing)}",
            f"give an aggregated TOFU eval log holding all of {', '.join(TASKS)}")
    figures = {}
    for eval_file in TASKS:
        figures.update(task_figures(logs[eval_file], eval_file))
    utility = [v for k, v in figures.items() if not k.startswith("Forget")]
    figures["Model Utility"] = model_utility(utility)
    return figures


def forget_ratios(logs: dict, what: str = "eval log") -> np.ndarray:
    require(FORGET_FILE in logs, f"the {what} has no {FORGET_FILE}", "evaluate with the tofu suite")
    log = logs[FORGET_FILE]
    return truth_ratios(column(log, "avg_paraphrased_loss", FORGET_FILE), column(log, "average_perturb_loss", FORGET_FILE))


def tofu_aggregate(target: dict, retain: dict) -> dict:
    """What TOFU's aggregate_eval_stat.py reports for a model against a retain model."""
    result = aggregate(target)
    result.update(forget_quality(forget_ratios(target, "target log"), forget_ratios(retain, "retain log")))
    return result


# ---------------------------------------------------------------- validation

def column(log: dict, key: str, where: str) -> list:
    """A per-sample field as a list ordered by sample index ("0", "1", ...)."""
    require(isinstance(log, dict) and key in log, f"{where} has no '{key}' field",
            "give a TOFU eval log (the tofu suite writes one); perturbed/paraphrased answers are needed")
    values = log[key]
    if isinstance(values, dict):
        values = [values[k] for k in sorted(values, key=_index_key)]
    require(isinstance(values, list) and len(values) > 0, f"{where}: '{key}' is empty",
            "evaluate at least one sample")
    return values


def _index_key(key):
    return (0, int(key)) if str(key).isdigit() else (1, str(key))


def _vector(values, what: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise UnlearnError(f"{what} must be numbers", "check the eval log") from None
    require(array.ndim == 1, f"{what} must be one number per sample, got shape {array.shape}")
    require(array.size > 0, f"{what} is empty", "evaluate at least one sample")
    require(bool(np.all(np.isfinite(array))), f"{what} holds a non-finite value", "check the eval log")
    return array


def _matrix(values, what: str) -> np.ndarray:
    lengths = {len(v) if isinstance(v, (list, tuple)) else -1 for v in values}
    require(-1 not in lengths, f"{what} must hold a list of losses per sample", "check the eval log")
    require(len(lengths) == 1, f"{what}: samples have different numbers of perturbed answers ({sorted(lengths)})",
            "give every sample the same number of perturbed answers")
    array = np.asarray(values, dtype=float)
    require(array.size > 0, f"{what} is empty", "evaluate at least one sample")
    require(bool(np.all(np.isfinite(array))), f"{what} holds a non-finite value", "check the eval log")
    return array


def _same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    require(len(a) == len(b), f"{name_a} has {len(a)} samples but {name_b} has {len(b)}",
            "score the same samples for both")
