"""Metric functions against values computed by hand, and TOFU's aggregation on the shipped reference logs
(the expected figures are recomputed here from the raw per-sample values, independently of the code)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from core.errors import UnlearnError
from core.evaluation import mia, text_metrics, tofu_metrics

ASSETS = Path(__file__).parent / "assets" / "tofu_reference_logs"
SHARED_LOGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu" / "reference_eval_logs"


# ---------------------------------------------------------------- TOFU figures, small inputs

def test_qa_probability_is_mean_of_exp_minus_loss():
    assert tofu_metrics.qa_probability([0.0, math.log(2)]) == pytest.approx((1 + 0.5) / 2)


def test_normalised_probability_over_true_and_perturbed_options():
    # true p = 1/2, perturbed 1/4 and 1/4 -> 0.5 / 1.0; true p = 1, perturbed 1 and 1 -> 1 / 3
    value = tofu_metrics.normalised_probability([math.log(2), 0.0], [[math.log(4), math.log(4)], [0.0, 0.0]])
    assert value == pytest.approx((0.5 + 1 / 3) / 2)


def test_truth_ratio_uses_mean_perturbed_loss():
    # x = exp(l_para - mean(l_pert)) = exp(1 - 3) for the first, exp(2 - 2) = 1 for the second
    ratios = tofu_metrics.truth_ratios([1.0, 2.0], [[2.0, 4.0], [1.0, 3.0]])
    assert ratios.tolist() == pytest.approx([math.exp(-2), 1.0])


def test_truth_ratio_scores_forget_and_other_sets():
    assert tofu_metrics.truth_ratio_score([0.5, 2.0, 1.0], forget=True) == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert tofu_metrics.truth_ratio_score([0.25, 2.0], forget=False) == pytest.approx((0.75 + 0.0) / 2)


def test_model_utility_is_harmonic_mean_and_zero_with_a_zero():
    assert tofu_metrics.model_utility([1.0, 0.5, 0.25]) == pytest.approx(3 / (1 + 2 + 4))
    assert tofu_metrics.model_utility([0.9, 0.0, 0.5]) == 0.0


def test_forget_quality_of_a_model_against_itself_is_one():
    ratios = [0.2, 0.5, 0.9, 1.3, 0.7, 0.4]
    assert tofu_metrics.forget_quality(ratios, ratios)["Forget Quality"] == pytest.approx(1.0)


def test_forget_quality_of_disjoint_samples_is_small():
    low, high = [0.1 + 0.01 * i for i in range(30)], [5 + 0.01 * i for i in range(30)]
    result = tofu_metrics.forget_quality(low, high)
    assert result["KS Test Forget"] == 1.0 and result["Forget Quality"] < 1e-10


# ---------------------------------------------------------------- reference logs

def _load(name: str) -> dict:
    return json.loads((ASSETS / f"phi_{name}_eval_log_aggregated.json").read_text())


def _hand_aggregate(logs: dict) -> dict:
    """TOFU's aggregation written out long-hand from the raw per-sample values (no project code)."""
    names = {"eval_real_author_wo_options.json": "Real Authors", "eval_real_world_wo_options.json": "Real World",
             "eval_log.json": "Retain", "eval_log_forget.json": "Forget"}
    figures = {}
    for file, name in names.items():
        log = logs[file]
        keys = sorted(log["avg_gt_loss"], key=int)
        probs = []
        for k in keys:
            true = math.exp(-log["avg_gt_loss"][k])
            if file.startswith("eval_log"):
                probs.append(true)
            else:
                probs.append(true / (true + sum(math.exp(-x) for x in log["average_perturb_loss"][k])))
        ratios = []
        for k in keys:
            pert = log["average_perturb_loss"][k]
            x = math.exp(log["avg_paraphrased_loss"][k] - sum(pert) / len(pert))
            ratios.append(min(x, 1 / x) if name == "Forget" else max(0.0, 1 - x))
        figures[f"{name} Prob."] = sum(probs) / len(probs)
        figures[f"{name} ROUGE"] = sum(log["rougeL_recall"].values()) / len(keys)
        figures[f"{name} Truth Ratio"] = sum(ratios) / len(ratios)
    nine = [v for k, v in figures.items() if not k.startswith("Forget")]
    figures["Model Utility"] = len(nine) / sum(1 / v for v in nine)
    return figures


def _ks_pvalue(a, b) -> float:
    from scipy.stats import ks_2samp

    return ks_2samp(a, b).pvalue


@pytest.mark.parametrize("name", ["full", "retain90"])
def test_aggregate_matches_hand_computation_on_reference_logs(name):
    logs = _load(name)
    ours = tofu_metrics.aggregate(logs)
    expected = _hand_aggregate(logs)
    assert set(ours) == set(expected)
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, rel=1e-9), key
    # sanity on TOFU's published phi-1.5 models: only the one fine-tuned on the forget set recalls it
    if name == "full":
        assert ours["Forget ROUGE"] > 0.9
    else:
        assert ours["Forget ROUGE"] < 0.6


def test_per_sample_truth_ratio_matches_the_logs_own_field():
    log = _load("full")["eval_log_forget.json"]
    ours = tofu_metrics.truth_ratios(tofu_metrics.column(log, "avg_paraphrased_loss", "f"),
                                     tofu_metrics.column(log, "average_perturb_loss", "f"))
    theirs = tofu_metrics.column(log, "truth_ratio", "f")
    assert ours.tolist() == pytest.approx(theirs, rel=1e-5)


def test_tofu_aggregate_forget_quality_on_reference_logs():
    full, retain = _load("full"), _load("retain90")
    result = tofu_metrics.tofu_aggregate(full, retain)

    def forget_ratios(logs):
        log = logs["eval_log_forget.json"]
        return [math.exp(sum(log["average_perturb_loss"][k]) / len(log["average_perturb_loss"][k])
                         - log["avg_paraphrased_loss"][k]) for k in log["avg_paraphrased_loss"]]

    assert result["Forget Quality"] == pytest.approx(_ks_pvalue(forget_ratios(full), forget_ratios(retain)))
    # the model trained on the forget authors is far from the retain model; the retain model matches itself
    assert result["Forget Quality"] < 1e-3
    assert tofu_metrics.tofu_aggregate(retain, retain)["Forget Quality"] == pytest.approx(1.0)


def test_tofu_aggregate_cli_prints_tofu_names(capsys):
    from core.cli import main

    code = main(["tofu-aggregate", str(ASSETS / "phi_full_eval_log_aggregated.json"),
                 str(ASSETS / "phi_retain90_eval_log_aggregated.json")])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0
    for task in ("Retain", "Forget", "Real Authors", "Real World"):
        for metric in ("ROUGE", "Prob.", "Truth Ratio"):
            assert f"{task} {metric}" in printed
    assert printed["Model Utility"] == pytest.approx(_hand_aggregate(_load("full"))["Model Utility"])
    assert 0 <= printed["Forget Quality"] <= 1


@pytest.mark.skipif(not SHARED_LOGS.is_dir(), reason="../shared reference logs not beside the repository")
def test_untrimmed_shared_logs_give_the_same_figures():
    untrimmed = json.loads((SHARED_LOGS / "tofu_phi_full_wd0.01_eval_log_aggregated.json").read_text())
    assert tofu_metrics.aggregate(untrimmed) == pytest.approx(tofu_metrics.aggregate(_load("full")))


# ---------------------------------------------------------------- bad inputs

def test_missing_perturbed_field_names_the_field():
    logs = _load("full")
    del logs["eval_log.json"]["average_perturb_loss"]
    with pytest.raises(UnlearnError, match="average_perturb_loss"):
        tofu_metrics.aggregate(logs)


def test_missing_eval_file_is_named():
    logs = _load("full")
    del logs["eval_real_world_wo_options.json"]
    with pytest.raises(UnlearnError, match="eval_real_world_wo_options.json"):
        tofu_metrics.aggregate(logs)


def test_mismatched_lengths_are_rejected():
    with pytest.raises(UnlearnError, match="samples"):
        tofu_metrics.truth_ratios([1.0, 2.0], [[1.0, 2.0]])
    with pytest.raises(UnlearnError, match="different numbers of perturbed answers"):
        tofu_metrics.truth_ratios([1.0, 2.0], [[1.0, 2.0], [1.0]])


def test_empty_eval_set_is_rejected():
    with pytest.raises(UnlearnError, match="empty"):
        tofu_metrics.column({"avg_gt_loss": {}}, "avg_gt_loss", "eval_log.json")
    with pytest.raises(UnlearnError, match="empty"):
        tofu_metrics.truth_ratio_score([], forget=True)


def test_tofu_aggregate_cli_reports_a_bad_file(tmp_path, capsys):
    from core.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["tofu-aggregate", str(bad), str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


# ---------------------------------------------------------------- text metrics

def test_rouge_recall_counts_reference_words_recovered():
    scores = text_metrics.rouge_recall(["the cat sat", "dogs running"], ["the cat sat on the mat", "dog runs"])
    # ROUGE-L recall = LCS / reference length: 3/6; with the Porter stemmer dogs->dog, running/runs->run: 2/2
    assert scores["rougeL_recall"] == pytest.approx([0.5, 1.0])
    assert scores["rouge1_recall"] == pytest.approx([0.5, 1.0])


def test_rouge_recall_rejects_mismatched_lengths():
    with pytest.raises(UnlearnError, match="2 generations but 1"):
        text_metrics.rouge_recall(["a", "b"], ["a"])


def test_repetition_is_share_of_repeated_bigrams():
    assert text_metrics.repetition("the cat sat on the mat") == 0.0
    # bigrams: (a b) (b a) (a b) (b a) -> 2 unique of 4
    assert text_metrics.repetition("a b a b a") == pytest.approx(0.5)
    assert text_metrics.repetition("word") == 0.0


def test_fluency_penalises_loops_surprise_and_silence():
    assert text_metrics.fluency("a plain sentence here", math.log(5)) == 1.0
    assert text_metrics.fluency("a plain sentence here", math.log(200)) == pytest.approx(20 / 200)
    assert text_metrics.fluency("a b a b a", math.log(2)) == pytest.approx(0.5)
    assert text_metrics.fluency("  ", 0.1) == 0.0


# ---------------------------------------------------------------- membership inference

def test_min_k_score_averages_the_lowest_tokens():
    # 40 % of 5 tokens = 2 lowest: (-5 + -4) / 2
    assert mia.min_k_score([-1, -5, -2, -4, -3]) == pytest.approx(-4.5)
    assert mia.min_k_score([-1.0], k=0.4) == -1.0


def test_min_k_leaves_out_the_end_of_answer_prediction_as_the_reference_does():
    answer = [-0.1, -0.2, -9.0]            # the last: the end-of-turn token, here very unlikely
    assert mia.scored_tokens(answer) == [-0.1, -0.2]
    assert mia.min_k_score(mia.scored_tokens(answer), k=0.4) == pytest.approx(-0.2)   # max(1, int(0.8)) = 1 token
    assert mia.min_k_score(answer, k=0.4) == pytest.approx(-9.0)                       # what keeping it gave
    assert mia.scored_tokens([-3.0]) == [-3.0]


def test_auc_counts_pairs_and_ties():
    assert mia.auc([3, 4], [1, 2]) == 1.0
    assert mia.auc([1, 2], [3, 4]) == 0.0
    # pairs: (2 vs 1) win, (2 vs 2) tie, (0 vs 1) loss, (0 vs 2) loss -> (1 + 0.5) / 4
    assert mia.auc([2, 0], [1, 2]) == pytest.approx(0.375)


def test_privacy_leakage_is_muses_relative_difference_on_one_minus_auc():
    # ((1 - AUC) - (1 - AUC_retain)) / (1 - AUC_retain) * 100, by hand
    assert mia.privacy_leakage(0.9, 0.5) == pytest.approx((0.1 - 0.5) / 0.5 * 100) == pytest.approx(-80.0)
    assert mia.privacy_leakage(0.99, 0.6) == pytest.approx(-97.5)
    assert mia.privacy_leakage(0.5, 0.5) == 0.0
    assert mia.privacy_leakage(0.25, 0.5) == pytest.approx(50.0)      # over-unlearned: positive


def test_mia_rejects_empty_sets():
    with pytest.raises(UnlearnError, match="holdout"):
        mia.auc([0.1], [])
    with pytest.raises(UnlearnError, match="token"):
        mia.min_k_score([])


# ---------------------------------------------------------------- best checkpoint

def test_select_best_maximises_forget_quality_above_the_utility_floor():
    from core.evaluation.selection import select_best

    evals = [{"epoch": 1, "Forget Quality": 0.01, "Model Utility": 0.50},
             {"epoch": 2, "Forget Quality": 0.30, "Model Utility": 0.46},
             {"epoch": 3, "Forget Quality": 0.90, "Model Utility": 0.20}]   # forgot, but broke the model
    pick = select_best(evals, original_utility=0.5)
    assert pick["index"] == 1 and pick["meets_floor"]          # 0.46 >= 0.9 * 0.5; 0.20 is not
    fallback = select_best(evals, original_utility=0.6)         # floor 0.54: nobody keeps it
    assert fallback["index"] == 0 and not fallback["meets_floor"]


def test_select_best_rejects_empty_or_incomplete_evaluations():
    from core.evaluation.selection import select_best

    with pytest.raises(UnlearnError, match="no evaluations"):
        select_best([], 0.5)
    with pytest.raises(UnlearnError, match="Forget Quality"):
        select_best([{"Model Utility": 0.4}], 0.5)
