"""TOFU (Maini et al. 2024): its protocol on the retain set, the forget set, Real Authors and World Facts:
per-sample logs in TOFU's own format (the four eval_*.json files plus eval_log_aggregated.json), the twelve
figures and Model Utility, Forget Quality against a retain model's logs, fluency, and min-k% membership
inference (with more attacks on request) when a held-out set is given."""
from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ...data import Example, load_examples
from ...errors import require
from ...methods.params import Param
from ...runs import write_json_atomic
from .. import attacks, mia, text_metrics, tofu_metrics
from ..probes import answer_nll, answer_token_logprobs, generate
from ..report import SUMMARY, prepare_out, read_json_file, table, title, write_summary
from ..scores import Settings, fluency_log, indexed
from .base import EvalContext, Need, Suite, register_suite

SPLITS = ("forget01", "forget05", "forget10")
# eval file -> (TOFU split, the answer field truth ratios compare the perturbed answers with)
TOFU_FILES = {
    "eval_log.json": ("retain_perturbed", "paraphrased_answer"),
    "eval_real_author_wo_options.json": ("real_authors_perturbed", "answer"),
    "eval_real_world_wo_options.json": ("world_facts_perturbed", "answer"),
    "eval_log_forget.json": (None, "paraphrased_answer"),   # the forgetNN_perturbed split evaluated
}
AGGREGATED_LOG = "eval_log_aggregated.json"
EXTRA_LOG = "eval_extra.json"
TASK_ORDER = ("Forget", "Retain", "Real Authors", "Real World")
# run_tofu's `figures`, each holding every figure of the ones after it: "selection" what choosing a checkpoint
# reads (Forget Quality and Model Utility), "forget_quality" the forget set's figures alone (no Model Utility)
FIGURE_SETS = ("all", "selection", "forget_quality")


def figures_cover(have: str, want: str) -> bool:
    """Whether an evaluation with figure set `have` holds every figure of `want` (a cache can answer it)."""
    return FIGURE_SETS.index(have) <= FIGURE_SETS.index(want)


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
                                             "else forget01)", "TOFU", choices=("auto", *SPLITS)),
               Param("figures", "all", "all; selection: only Forget Quality and Model Utility (to choose a "
                                       "checkpoint; no forget-answer generation, fluency or MIA, ~40 % faster); "
                                       "forget_quality: the forget set alone (its Prob., Truth Ratio and Forget "
                                       "Quality, with --retain-logs; ~1/3 of selection's time)",
                     "ours", choices=FIGURE_SETS),)
    max_samples = 300      # TOFU's ds_size
    max_new_tokens = 200   # TOFU generates up to 200 tokens

    def run(self, context: EvalContext) -> dict:
        chosen = context.options["forget_split"]
        split = chosen if chosen != "auto" else _run_split(context.loaded) or "forget01"
        holdout = context.data.get("holdout")
        extra = tuple(attacks.check_attacks(context.options["attacks"].split(",")))
        return run_tofu(context.loaded, context.out, context.settings, split, context.original,
                        load_examples(holdout, "holdout") if holdout else None,
                        context.data.get("retain_logs"), reference_name=context.original_name, extra_attacks=extra,
                        figures=context.options["figures"])

    def table(self, summary: dict) -> str:
        figures = summary["figures"]
        rows = [[task] + [figures.get(f"{task} {m}") for m in tofu_metrics.METRICS]
                + [summary.get("fluency", {}).get(task)] for task in TASK_ORDER]
        text = table(["set", *tofu_metrics.METRICS, "fluency"], rows)
        totals = [["Model Utility", figures.get("Model Utility")], ["Forget Quality", figures.get("Forget Quality")]]
        if "mia" in summary:
            totals.append(["MIA AUC (min-k%)", summary["mia"]["auc"]])
            totals.append(["PrivLeak %", summary["mia"].get("privacy_leakage")])
        for name, value in summary.get("attacks", {}).items():
            totals.append([f"MIA AUC ({name})", value])
        for name, value in summary.get("attacks_privacy_leakage", {}).items():
            totals.append([f"PrivLeak % ({name})", value])
        return f"{title(summary, 'TOFU')}\n\n{text}\n\n{table(['figure', 'value'], totals)}"


def _run_split(loaded) -> str | None:
    forget = (loaded.run_config or {}).get("forget", "")
    name = forget.removeprefix("tofu:") if forget.startswith("tofu:") else ""
    return name if name in SPLITS else None


# ---------------------------------------------------------------- the protocol

def run_tofu(loaded, out: Path, settings: Settings, forget_split: str = "forget01", reference=None,
             holdout: list[Example] | None = None, retain_logs: Path | None = None,
             records: dict[str, list[dict]] | None = None, reference_name: str | None = None,
             extra_attacks: tuple[str, ...] = (), figures: str = "all") -> dict:
    """Evaluate `loaded` (a LoadedModel) with TOFU's protocol and write every file into `out`.

    reference: (model, tokenizer) scoring fluency, normally the original model (default: the model itself),
    named by reference_name in the summary.
    retain_logs: a retain model's eval output (directory or aggregated log) for Forget Quality / PrivLeak.
    records: eval file -> records, to evaluate other TOFU-format data than the bundled splits.
    figures: "all", or "selection": only what Forget Quality and Model Utility need (choosing a checkpoint by
    them), without the forget answers' generation (Forget ROUGE), fluency and the membership attack: the same
    FQ and MU in ~60 % of the time; or "forget_quality": the forget file alone, scored as "selection" scores it
    (the same Forget Quality, Prob. and Truth Ratio; no Model Utility), which needs `retain_logs`.
    """
    require(figures in FIGURE_SETS, f"unknown figures {figures!r}", f"use one of {', '.join(FIGURE_SETS)}")
    require(figures != "forget_quality" or retain_logs is not None,
            "the forget_quality figures are Forget Quality, which compares with a retain model's logs",
            "give --retain-logs (a retain model's tofu evaluation), or use --figures selection")
    everything = figures == "all"
    forget_only = figures == "forget_quality"
    settings.validate()
    started = time.time()
    out = prepare_out(out)
    retain = read_eval_output(retain_logs) if retain_logs else None   # fail before the slow part
    records = records or tofu_records(forget_split)
    reference = reference or (loaded.model, loaded.tokenizer)
    logs, extra = {}, {"dtype": loaded.dtype, "fluency": {}}
    for eval_file, (_, base_key) in TOFU_FILES.items():
        if forget_only and eval_file != tofu_metrics.FORGET_FILE:
            continue
        subset = records[eval_file][:settings.max_samples]
        normalise = eval_file in tofu_metrics.NORMALISED_FILES
        log = task_log(loaded.model, loaded.tokenizer, subset, base_key, normalise, settings, eval_file,
                       generate_answers=everything or eval_file != tofu_metrics.FORGET_FILE)
        logs[eval_file] = log
        write_json_atomic(out / eval_file, log)
        if not everything:
            continue
        questions = [r["question"] for r in subset]
        generations = [log["generated_text"][str(i)][1] for i in range(len(subset))]
        columns = fluency_log(reference, questions, generations, settings.batch_size, eval_file)
        extra["fluency"][eval_file] = {key: indexed(values) for key, values in columns.items()}
    write_json_atomic(out / AGGREGATED_LOG, logs)

    aggregated = (tofu_metrics.task_figures(logs[tofu_metrics.FORGET_FILE], tofu_metrics.FORGET_FILE)
                  if forget_only else tofu_metrics.aggregate(logs))
    if retain:
        aggregated.update(tofu_metrics.forget_quality(tofu_metrics.forget_ratios(logs),
                                                      tofu_metrics.forget_ratios(retain["logs"], "retain model's log")))
    summary = {"suite": "tofu", "model": loaded.source, "dtype": loaded.dtype, "forget_split": forget_split,
               "figures": aggregated,
               "fluency": {tofu_metrics.TASKS[f]: _mean(v["fluency"]) for f, v in extra["fluency"].items()},
               "repetition": {tofu_metrics.TASKS[f]: _mean(v["repetition"]) for f, v in extra["fluency"].items()}}
    if not everything:
        summary["figures_set"] = figures
    if holdout is not None and everything:
        forget = [Example(answer=r["answer"], prompt=r["question"])
                  for r in records["eval_log_forget.json"][:settings.max_samples]]
        extra["mia"] = mia_log(loaded.model, loaded.tokenizer, forget, holdout, settings.batch_size)
        summary["mia"] = {"auc": extra["mia"]["auc"], "holdout_samples": len(holdout)}
        retain_summary = (retain or {}).get("summary") or {}
        retain_auc = retain_summary.get("mia", {}).get("auc")
        if retain_auc is not None:
            summary["mia"]["retain_auc"] = retain_auc
            summary["mia"]["privacy_leakage"] = mia.privacy_leakage(extra["mia"]["auc"], retain_auc)
        if extra_attacks:   # the rest of the attack family, beside min-k% (kept as it was)
            results = attacks.membership(loaded.model, loaded.tokenizer, forget, holdout, extra_attacks,
                                         settings.batch_size, reference if reference_name else None)
            extra["attacks"] = {name: {"forget": r["forget"], "holdout": r["holdout"]} for name, r in results.items()}
            summary["attacks"] = {name: r["auc"] for name, r in results.items()}
            retain_attacks = retain_summary.get("attacks", {})
            leaks = {name: mia.privacy_leakage(auc, retain_attacks[name])
                     for name, auc in summary["attacks"].items() if name in retain_attacks}
            if leaks:
                summary["attacks_privacy_leakage"] = leaks
    summary["settings"] = {**asdict(settings), "retain_logs": str(retain_logs) if retain_logs else None,
                           "fluency_reference": reference_name or "the evaluated model itself"}
    summary["wall_seconds"] = round(time.time() - started, 1)
    write_json_atomic(out / EXTRA_LOG, extra)
    write_summary(out, summary, TofuSuite().table(summary))
    return summary


def tofu_records(forget_split: str = "forget01") -> dict[str, list[dict]]:
    """The records of each eval file, from the bundled TOFU slice."""
    from ...tofu import load_records

    require(forget_split in SPLITS, f"TOFU has no perturbed answers for {forget_split!r}",
            "use --forget-split forget01, forget05 or forget10")
    return {name: load_records(split or f"{forget_split}_perturbed") for name, (split, _) in TOFU_FILES.items()}


def check_records(records: list[dict], base_key: str, where: str) -> int:
    """Every record needs question, answer, the base answer and equally many perturbed answers."""
    require(len(records) > 0, f"{where} holds no samples", "evaluate a non-empty set")
    counts = set()
    for index, record in enumerate(records):
        for key in ("question", "answer", base_key, "perturbed_answer"):
            require(key in record, f"{where}, sample {index} has no '{key}' field",
                    "the tofu suite needs TOFU's perturbed splits; for your own data use --suite quick")
        perturbed = record["perturbed_answer"]
        require(isinstance(perturbed, list) and len(perturbed) > 0,
                f"{where}, sample {index}: 'perturbed_answer' must be a non-empty list", "give a list of wrong answers")
        counts.add(len(perturbed))
    require(len(counts) == 1, f"{where}: samples have different numbers of perturbed answers ({sorted(counts)})",
            "give every sample the same number of perturbed answers")
    return counts.pop()


def task_log(model, tokenizer, records: list[dict], base_key: str, normalise: bool, settings: Settings,
             name: str, generate_answers: bool = True) -> dict:
    """One eval file's per-sample log, with TOFU's keys and TOFU's definitions (without generated answers and
    their ROUGE unless `generate_answers`)."""
    k = check_records(records, base_key, name)
    questions = [r["question"] for r in records]
    answers = [r["answer"] for r in records]
    bs = settings.batch_size
    gt_sum, gt_n = answer_nll(model, tokenizer, list(zip(questions, answers)), bs, f"{name}: answers")
    if generate_answers:
        generations = generate(model, tokenizer, questions, settings.max_new_tokens, bs, f"{name}: generating")
        rouge = text_metrics.rouge_recall(generations, answers)
    base_sum, base_n = answer_nll(model, tokenizer, [(r["question"], r[base_key]) for r in records], bs,
                                  f"{name}: paraphrased")
    flat = [(r["question"], p) for r in records for p in r["perturbed_answer"]]
    pert_sum, pert_n = answer_nll(model, tokenizer, flat, bs, f"{name}: perturbed")
    pert_sum = [pert_sum[i * k:(i + 1) * k] for i in range(len(records))]
    pert_n = [pert_n[i * k:(i + 1) * k] for i in range(len(records))]

    avg_gt = [s / n for s, n in zip(gt_sum, gt_n)]
    avg_base = [s / n for s, n in zip(base_sum, base_n)]
    avg_pert = [[s / n for s, n in zip(row_s, row_n)] for row_s, row_n in zip(pert_sum, pert_n)]
    ratios = tofu_metrics.truth_ratios(avg_base, avg_pert).tolist()
    generated = {"generated_text": [[q, g, a] for q, g, a in zip(questions, generations, answers)],
                 "rouge1_recall": rouge["rouge1_recall"], "rougeL_recall": rouge["rougeL_recall"]} \
        if generate_answers else {}
    log = {   # in TOFU's key order
        "avg_gt_loss": avg_gt, "gt_loss": gt_sum, "num_token_gt": gt_n, **generated,
        "average_perturb_loss": avg_pert, "avg_paraphrased_loss": avg_base, "truth_ratio": ratios,
        "paraphrased_loss": base_sum, "perturb_loss": pert_sum, "num_token_paraphrased": base_n,
        "num_token_perturb": pert_n,
    }
    if normalise:   # Real Authors / World Facts: -log of the true answer's probability among the options
        log["normalized_gt_loss"] = [-math.log(p) for p in _normalised_probs(avg_gt, avg_pert)]
    return {key: indexed(values) for key, values in log.items()}


def _normalised_probs(avg_gt: list[float], avg_pert: list[list[float]]) -> list[float]:
    true = np.exp(-np.asarray(avg_gt))
    return (true / (true + np.exp(-np.asarray(avg_pert)).sum(-1))).tolist()


def _mean(indexed_values: dict) -> float:
    return float(np.mean(list(indexed_values.values())))


def mia_log(model, tokenizer, forget: list[Example], holdout: list[Example], batch_size: int) -> dict:
    """Min-k% probability on forget (members) and held-out (non-members) answers, and the attack's AUC."""
    require(len(holdout) > 0, "the held-out set for membership inference is empty", "give a non-empty --holdout")
    scores = {}
    for role, examples in (("forget", forget), ("holdout", holdout)):
        logprobs = answer_token_logprobs(model, tokenizer, examples, batch_size, f"MIA: {role}")
        scores[role] = [mia.min_k_score(mia.scored_tokens(lp)) for lp in logprobs]
    return {"auc": mia.auc(scores["forget"], scores["holdout"]), "forget_min_k": scores["forget"],
            "holdout_min_k": scores["holdout"]}


def read_eval_output(path) -> dict:
    """An aggregated TOFU eval log (file), or an `unlearn eval` output directory: {"logs", "summary"}."""
    path = Path(path)
    if path.is_dir():
        logs = read_json_file(path / AGGREGATED_LOG, "aggregated eval log")
        summary = read_json_file(path / SUMMARY, "eval summary") if (path / SUMMARY).is_file() else None
        return {"logs": logs, "summary": summary}
    logs = read_json_file(path, "aggregated eval log")
    require(isinstance(logs, dict), f"{path} is not an aggregated TOFU eval log (a JSON object keyed by file name)",
            f"give an {AGGREGATED_LOG} as written by TOFU or `unlearn eval --suite tofu`")
    return {"logs": logs, "summary": None}
