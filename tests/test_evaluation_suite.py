"""Evaluation end to end on the tiny random model: TOFU-format logs, the quick suite, runs (full and LoRA),
checkpoints, `unlearn finetune`, and clear errors for bad input. Generation is capped at a few tokens."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from core.cli import main
from core.errors import UnlearnError
from core.evaluation.scores import Settings
from core.evaluation.suites import quick, tofu
from core.models import open_model
from core.tofu import load_records

# The per-sample keys TOFU's evaluate_util.py writes (normalized_gt_loss only for the two option sets).
TOFU_KEYS = ["avg_gt_loss", "gt_loss", "num_token_gt", "generated_text", "rouge1_recall", "rougeL_recall",
             "average_perturb_loss", "avg_paraphrased_loss", "truth_ratio", "paraphrased_loss", "perturb_loss",
             "num_token_paraphrased", "num_token_perturb"]
SHARED_LOGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu" / "reference_eval_logs"
FAST = ["--max-samples", "3", "--max-new-tokens", "4", "--batch-size", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def tofu_eval(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tofu-eval")
    holdout = out / "holdout.jsonl"
    holdout.write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n"
                               for r in load_records("full")[3900:3903]))
    assert main(["eval", str(tiny_model_dir), "--suite", "tofu", "--out", str(out / "eval"),
                 "--holdout", str(holdout), "--attacks", "loss,min_k_pp", *FAST]) == 0
    return out / "eval"


def test_tofu_suite_writes_tofu_format_logs(tofu_eval):
    aggregated = json.loads((tofu_eval / "eval_log_aggregated.json").read_text())
    assert list(aggregated) == list(tofu.TOFU_FILES)
    for name, log in aggregated.items():
        expected = TOFU_KEYS + (["normalized_gt_loss"] if "wo_options" in name else [])
        assert list(log) == expected
        assert json.loads((tofu_eval / name).read_text()) == log
        assert list(log["avg_gt_loss"]) == ["0", "1", "2"]
        for i in log["avg_gt_loss"]:
            assert log["gt_loss"][i] == pytest.approx(log["avg_gt_loss"][i] * log["num_token_gt"][i])
            question, generated, answer = log["generated_text"][i]
            assert isinstance(generated, str) and answer
        k = 5 if name in ("eval_log.json", "eval_log_forget.json") else 3
        assert all(len(v) == k for v in log["perturb_loss"].values())


@pytest.mark.skipif(not SHARED_LOGS.is_dir(), reason="../shared reference logs not beside the repository")
def test_tofu_suite_keys_equal_the_reference_logs(tofu_eval):
    reference = json.loads((SHARED_LOGS / "tofu_phi_retain90_wd0.01_eval_log_aggregated.json").read_text())
    ours = json.loads((tofu_eval / "eval_log_aggregated.json").read_text())
    assert set(ours) == set(reference)
    for name in reference:
        assert list(ours[name]) == list(reference[name])


def test_tofu_suite_nll_matches_a_direct_forward_pass(tofu_eval, tiny_model_dir, tokenizer):
    """avg_gt_loss of sample 0 recomputed by hand: chat-template prompt, answer + end-of-turn, mean CE."""
    from transformers import AutoModelForCausalLM

    record = load_records("retain_perturbed")[0]
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": record["question"]}],
                                           add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(record["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + answer_ids])).logits[0]
    logprobs = torch.log_softmax(logits[len(prompt_ids) - 1:-1].float(), -1)
    expected = -logprobs.gather(-1, torch.tensor(answer_ids)[:, None]).mean().item()
    log = json.loads((tofu_eval / "eval_log.json").read_text())
    assert log["avg_gt_loss"]["0"] == pytest.approx(expected, rel=1e-4)
    assert log["num_token_gt"]["0"] == len(answer_ids)


def test_tofu_suite_summary_matches_aggregating_its_own_logs(tofu_eval, capsys):
    summary = json.loads((tofu_eval / "summary.json").read_text())
    capsys.readouterr()
    assert main(["tofu-aggregate", str(tofu_eval), str(tofu_eval)]) == 0
    printed = json.loads(capsys.readouterr().out)
    for key, value in summary["figures"].items():
        assert printed[key] == pytest.approx(value)
    assert printed["Forget Quality"] == pytest.approx(1.0)   # a model against itself
    assert 0 <= summary["mia"]["auc"] <= 1 and summary["mia"]["holdout_samples"] == 3
    assert set(summary["attacks"]) == {"loss", "min_k_pp"} and all(0 <= v <= 1 for v in summary["attacks"].values())
    assert "MIA AUC (loss)" in (tofu_eval / "summary.md").read_text()
    assert set(summary["fluency"]) == {"Retain", "Forget", "Real Authors", "Real World"}
    assert "Model Utility" in (tofu_eval / "summary.md").read_text()


def test_forget_quality_and_privacy_leakage_against_retain_logs(tofu_eval, tiny_model_dir, tmp_path):
    from core.data import Example

    holdout = load_records("full")[3900:3903]
    loaded = open_model(str(tiny_model_dir), "cpu")
    summary = tofu.run_tofu(loaded, tmp_path / "again", Settings(3, 4, 4), retain_logs=tofu_eval,
                            holdout=[Example(answer=r["answer"], prompt=r["question"]) for r in holdout])
    assert summary["figures"]["Forget Quality"] == pytest.approx(1.0)   # same model, same samples
    assert summary["mia"]["privacy_leakage"] == pytest.approx(0.0)


def test_selection_figures_give_the_same_fq_and_mu_without_forget_generation_fluency_or_mia(tofu_eval,
                                                                                              tiny_model_dir, tmp_path):
    from core.data import Example

    holdout = load_records("full")[3900:3903]
    loaded = open_model(str(tiny_model_dir), "cpu")
    settings = Settings(3, 4, 4)
    examples = [Example(answer=r["answer"], prompt=r["question"]) for r in holdout]
    full = tofu.run_tofu(loaded, tmp_path / "all", settings, retain_logs=tofu_eval, holdout=examples)
    chosen = tofu.run_tofu(loaded, tmp_path / "selection", settings, retain_logs=tofu_eval, holdout=examples,
                           figures="selection")
    for figure in ("Forget Quality", "Model Utility", "Forget Prob.", "Forget Truth Ratio"):
        assert chosen["figures"][figure] == pytest.approx(full["figures"][figure])
    assert set(full["figures"]) - set(chosen["figures"]) == {"Forget ROUGE"}
    assert "mia" not in chosen and chosen["fluency"] == {} and chosen["figures_set"] == "selection"
    forget_log = json.loads((tmp_path / "selection" / "eval_log_forget.json").read_text())
    assert "generated_text" not in forget_log and "rougeL_recall" not in forget_log
    assert "generated_text" in json.loads((tmp_path / "selection" / "eval_log.json").read_text())   # Retain ROUGE
    with pytest.raises(UnlearnError, match="unknown figures"):
        tofu.run_tofu(loaded, tmp_path / "bad", settings, figures="some")
    assert main(["eval", str(tiny_model_dir), "--suite", "tofu", "--figures", "selection", "--out",
                 str(tmp_path / "cli"), *FAST]) == 0                  # the same from the command line
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["figures_set"] == "selection"


def test_forget_quality_figures_score_the_forget_set_alone_as_selection_does(tofu_eval, tiny_model_dir, tmp_path):
    loaded = open_model(str(tiny_model_dir), "cpu")
    settings = Settings(3, 4, 4)
    chosen = tofu.run_tofu(loaded, tmp_path / "selection", settings, retain_logs=tofu_eval, figures="selection")
    forget = tofu.run_tofu(loaded, tmp_path / "forget", settings, retain_logs=tofu_eval, figures="forget_quality")
    assert set(forget["figures"]) == {"Forget Quality", "KS Test Forget", "Forget Prob.", "Forget Truth Ratio"}
    for figure in forget["figures"]:
        assert forget["figures"][figure] == chosen["figures"][figure]      # the same scoring: equal, not close
    assert forget["figures_set"] == "forget_quality"
    assert sorted(p.name for p in (tmp_path / "forget").glob("eval_log*.json")) == \
        ["eval_log_aggregated.json", "eval_log_forget.json"]
    with pytest.raises(UnlearnError, match="compares with a retain model's logs"):
        tofu.run_tofu(loaded, tmp_path / "alone", settings, figures="forget_quality")
    assert not (tmp_path / "alone").exists()
    # a cached evaluation answers a request for the same figures or fewer
    assert tofu.figures_cover("all", "selection") and tofu.figures_cover("selection", "forget_quality")
    assert not tofu.figures_cover("forget_quality", "selection") and not tofu.figures_cover("selection", "all")


def test_batched_generation_keeps_input_order(tiny_model_dir):
    from core.evaluation.probes import generate

    loaded = open_model(str(tiny_model_dir), "cpu")
    questions = ["Short?", "A much longer question that needs many more tokens than the others do?", "Mid size one?"]
    batched = generate(loaded.model, loaded.tokenizer, questions, 3, batch_size=3)
    single = [generate(loaded.model, loaded.tokenizer, [q], 3, batch_size=1)[0] for q in questions]
    assert batched == single


# ---------------------------------------------------------------- runs, finetune, quick suite

@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "sft_lora"
    data = out.parent / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": f"Who wrote book {i}?", "answer": f"Zorblat wrote book {i}."}) + "\n"
                            for i in range(6)))
    code = main(["finetune", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
                 "--max-steps", "2", "--batch-size", "3", "--lora", "--lr", "1e-2", "--save-steps", "1",
                 "--device", "cpu"])
    assert code == 0
    return out


def test_finetune_writes_a_run_with_the_sft_method(lora_run):
    config = json.loads((lora_run / "config.json").read_text())
    assert config["method"] == "sft" and config["lora"] is True
    assert (lora_run / "model" / "adapter_config.json").is_file()
    summary = json.loads((lora_run / "summary.json").read_text())
    assert summary["after"]["forget_nll"] < summary["before"]["forget_nll"]   # it learned the data


def test_lora_run_loads_merged_and_equal_to_the_adapter(lora_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = open_model(str(lora_run), "cpu", dtype="float32")   # compared at fp32 precision
    assert merged.original == str(tiny_model_dir) and merged.run_config["method"] == "sft"
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                        str(lora_run / "model")).eval()
    ids = torch.tensor([[1, 5, 9, 200, 7]])
    with torch.no_grad():
        assert torch.allclose(merged.model(ids).logits, adapter(ids).logits, atol=1e-5)


def test_checkpoint_opens_with_its_trained_weights(lora_run, tiny_model_dir):
    checkpoint = lora_run / "checkpoints" / "step-000001"
    assert checkpoint.is_dir()
    step1 = open_model(str(checkpoint), "cpu").model
    base = open_model(str(tiny_model_dir), "cpu").model
    final = open_model(str(lora_run), "cpu").model
    ids = torch.tensor([[1, 5, 9, 200, 7]])
    with torch.no_grad():
        a, b, c = (m(ids).logits for m in (base, step1, final))
    assert not torch.allclose(a, b) and not torch.allclose(b, c)


def test_quick_suite_on_a_run_reports_before_and_after(lora_run, tmp_path, capsys):
    out = tmp_path / "quick"
    assert main(["eval", str(lora_run), "--suite", "quick", "--out", str(out), *FAST]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for stage in ("before", "after"):
        scores = summary[stage]["forget"]
        assert set(scores) >= {"nll", "prob", "rougeL_recall", "fluency", "repetition", "samples"}
        assert 0 < scores["prob"] <= 1 and 0 <= scores["fluency"] <= 1 and scores["samples"] == 3
    # the run fine-tuned on this data: after has the lower NLL, as its own summary says
    assert summary["after"]["forget"]["nll"] < summary["before"]["forget"]["nll"]
    per_sample = json.loads((out / "quick_log.json").read_text())
    avg = list(per_sample["after"]["forget"]["avg_loss"].values())
    assert summary["after"]["forget"]["prob"] == pytest.approx(sum(math.exp(-x) for x in avg) / len(avg))
    assert "forget after" in capsys.readouterr().out
    for stage in ("before", "after"):   # teacher-forced memorisation beside the generation figures
        assert 0 <= summary[stage]["forget"]["exact_memorisation"] <= 1
        assert 0 <= summary[stage]["forget"]["extraction_strength"] <= 1
    assert len(per_sample["after"]["forget"]["extraction_strength"]) == 3



def test_the_dtype_is_chosen_and_written_into_every_result(lora_run, tmp_path):
    summaries = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        assert main(["eval", str(lora_run), "--suite", "quick", "--out", str(out), "--dtype", dtype, *FAST]) == 0
        summaries[dtype] = json.loads((out / "summary.json").read_text())
        assert summaries[dtype]["dtype"] == dtype
        assert json.loads((out / "quick_log.json").read_text())["dtype"] == dtype
        assert f"{dtype} weights" in (out / "summary.md").read_text()
    fp32, bf16 = (summaries[d]["after"]["forget"]["nll"] for d in ("float32", "bfloat16"))
    assert fp32 != bf16 and bf16 == pytest.approx(fp32, rel=0.02)   # bf16 rounding, nothing more

def test_full_finetune_run_evaluates(tiny_model_dir, qa_files, tmp_path):
    out = tmp_path / "sft_full"
    assert main(["finetune", "--model", str(tiny_model_dir), "--data", str(qa_files["forget"]), "--out", str(out),
                 "--max-steps", "1", "--batch-size", "4", "--device", "cpu"]) == 0
    loaded = open_model(str(out), "cpu")
    assert loaded.original == str(tiny_model_dir)
    summary = quick.run_quick(loaded, tmp_path / "q", evaluator_examples(qa_files["forget"]), None,
                              Settings(2, 2, 2))
    assert summary["after"]["forget"]["samples"] == 2 and "before" not in summary


def evaluator_examples(path):
    from core.data import load_examples

    return load_examples(str(path))


# ---------------------------------------------------------------- bad input

def test_records_without_perturbed_answers_get_a_clear_error():
    records = [{"question": "q", "answer": "a", "paraphrased_answer": "p"}]
    with pytest.raises(UnlearnError, match="perturbed_answer") as err:
        tofu.check_records(records, "paraphrased_answer", "eval_log.json")
    assert "--suite quick" in err.value.fix


def test_records_with_unequal_perturbed_counts_are_rejected():
    records = [{"question": "q", "answer": "a", "paraphrased_answer": "p", "perturbed_answer": ["x", "y"]},
               {"question": "q", "answer": "a", "paraphrased_answer": "p", "perturbed_answer": ["x"]}]
    with pytest.raises(UnlearnError, match="different numbers"):
        tofu.check_records(records, "paraphrased_answer", "eval_log.json")


def test_empty_eval_set_is_rejected(tiny_model_dir, tmp_path):
    with pytest.raises(UnlearnError, match="holds no samples"):
        tofu.check_records([], "answer", "eval_real_author_wo_options.json")
    loaded = open_model(str(tiny_model_dir), "cpu")
    with pytest.raises(UnlearnError, match="empty"):
        quick.run_quick(loaded, tmp_path / "q", [], None, Settings(2, 2, 2))


def test_cli_errors_are_one_line_with_a_fix(tiny_model_dir, tmp_path, capsys):
    cases = [
        (["eval", str(tiny_model_dir), "--suite", "quick", "--out", str(tmp_path / "a"), *FAST], "needs forget data"),
        (["eval", str(tmp_path / "missing"), "--out", str(tmp_path / "b"), *FAST], "neither a directory"),
        (["eval", str(tiny_model_dir), "--out", str(tmp_path / "c"), "--forget-split", "forget50", *FAST],
         "forget_split must be one of auto, forget01, forget05, forget10"),
        (["eval", str(tiny_model_dir), "--suite", "quick", "--out", str(tmp_path / "f"), "--holdout", "x.jsonl",
          *FAST], "the quick suite does not read --holdout"),
        (["eval", str(tiny_model_dir), "--out", str(tmp_path / "d"), "--max-samples", "0"], "max_samples"),
        (["tofu-aggregate", str(tmp_path / "none.json"), str(tmp_path / "none.json")], "does not exist"),
        (["finetune", "--out", str(tmp_path / "e")], "no training data"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "fix:" in err, (argv, err)


def test_unfinished_run_points_to_its_checkpoints(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "bundled", "resolved_model": {"path": "x"}}))
    with pytest.raises(UnlearnError, match="no final model"):
        open_model(str(run), "cpu")


def test_best_checkpoint_command_applies_the_stated_rule(tmp_path, capsys):
    def write(name, fq, mu):
        path = tmp_path / name
        path.mkdir()
        (path / "summary.json").write_text(json.dumps({"figures": {"Forget Quality": fq, "Model Utility": mu}}))
        return str(path)

    original = write("original", 1e-5, 0.50)
    evals = [write("epoch1", 0.02, 0.49), write("epoch2", 0.40, 0.47), write("epoch3", 0.95, 0.10)]
    assert main(["best-checkpoint", "--original", original, *evals]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["best"] == evals[1] and printed["meets_floor"] is True
    with pytest.raises(SystemExit):
        main(["best-checkpoint", *evals])    # --original is required

