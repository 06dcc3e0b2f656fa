"""The benchmark ledger: what a mini-TOFU run measured outlives the machine and its cache of models."""
from __future__ import annotations

import os
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from benchmarks.ledger import Ledger, SettingsChanged
from benchmarks.tofu_mini import main
from benchmarks.tofu_plans import forget50_plans
from benchmarks.tofu_report import provenance, stage_table
from benchmarks.tofu_stages import Bench, run_plan


def _point(mu, fq=0.5, forget_prob=0.2):
    return {"mu": mu, "fq": fq, "forget_prob": forget_prob}


def _recorded(path, plan, methods):
    ledger = Ledger(path)
    ledger.keep_models(asdict(plan), _point(0.32), _point(0.31, fq=None), weights="sha-first")
    for method in methods:
        ledger.keep_curve(asdict(plan), method, [{"epoch": 0, **_point(0.32)}, {"epoch": 1, **_point(0.3)}], None)
    return ledger


def test_a_plan_whose_methods_are_recorded_is_not_learned_again_on_a_fresh_machine(tmp_path):
    plan = forget50_plans()[0]
    _recorded(tmp_path / "ledger", plan, plan.methods)
    runs = tmp_path / "runs"   # empty, as on a new machine
    result = run_plan(plan, Bench(runs, "cpu", Ledger(tmp_path / "ledger")))
    assert list(result["curves"]) == list(plan.methods)
    assert result["target"]["mu"] == 0.32 and result["curves"]["ga"][1]["mu"] == 0.3
    assert not (runs / plan.name).exists()   # no data written, nothing learned


def test_methods_measured_now_may_be_fewer_than_the_plans_and_the_report_says_what_is_missing(tmp_path):
    # a protocol of its own, so the line pinned below does not change each time the protocol gains a method
    plan = replace(forget50_plans()[1], methods=("ga", "grad_diff", "npo", "npo_rt", "simnpo"))
    ledger = _recorded(tmp_path / "ledger", plan, ("ga", "npo_rt"))
    result = run_plan(plan, Bench(tmp_path / "runs", "cpu", ledger), only=("npo_rt",))
    assert list(result["curves"]) == ["ga", "npo_rt"]   # the plan's order, not the order recorded
    lines = provenance(result)
    assert lines[0] == "**Partial: not measured yet: GradDiff, NPO, SimNPO.**"
    assert not (tmp_path / "runs" / plan.name).exists()


def test_a_record_measured_under_other_settings_is_refused_not_mixed_in(tmp_path):
    plan = forget50_plans()[0]
    _recorded(tmp_path / "ledger", plan, ("ga",))
    hotter = replace(plan, unlearn_lr=1e-4)
    with pytest.raises(SettingsChanged, match="unlearn_lr") as refused:
        Ledger(tmp_path / "ledger").plan(asdict(hotter))
    assert "--results" in str(refused.value)
    # which methods a plan runs is not a setting: a protocol that gains a method keeps its record
    assert Ledger(tmp_path / "ledger").plan(asdict(replace(plan, methods=plan.methods + ("wga",))))


def test_a_target_learned_again_is_noted_with_the_figures_that_changed(tmp_path):
    plan = forget50_plans()[0]
    ledger = _recorded(tmp_path / "ledger", plan, ("ga",))
    seen = ledger.keep_models(asdict(plan), _point(0.32), _point(0.31, fq=None), weights="sha-first")
    same = ledger.keep_models(asdict(plan), _point(0.32), _point(0.31, fq=None), weights="sha-second")
    changed = Ledger(tmp_path / "ledger").keep_models(asdict(plan), _point(0.33), _point(0.31, fq=None),
                                                    weights="sha-third")
    again = Ledger(tmp_path / "ledger").keep_models(asdict(plan), _point(0.33), _point(0.31, fq=None),
                                                  weights="sha-third")
    assert seen is None and again is None   # the same weights, evaluated again from the cache: not news
    assert same.endswith("identical")
    assert '"mu": [0.32, 0.33]' in changed
    result = Ledger(tmp_path / "ledger").result(asdict(plan), plan.methods)
    assert result["target"]["mu"] == 0.32   # the target the recorded methods started from
    notes = [line for line in provenance(result) if line.startswith("The target was learned again")]
    assert len(notes) == 2 and "identical" in notes[0] and "mu 0.32 -> 0.33" in notes[1]


def test_the_retain_models_evaluation_is_kept_whole_so_it_is_never_learned_again(tmp_path):
    from core.evaluation.suites.tofu import read_eval_output

    plan = forget50_plans()[0]
    evaluated = tmp_path / "runs" / "eval" / "retain"
    evaluated.mkdir(parents=True)
    (evaluated / "eval_log_aggregated.json").write_text('{"eval_log_forget.json": {"avg_gt_loss": {"0": 1.5}}}')
    (evaluated / "summary.json").write_text('{"figures": {"Model Utility": 0.31}, "mia": {"auc": 0.52}}')
    (evaluated / "eval_log.json").write_text("{}")   # not needed by Forget Quality: not kept
    ledger = Ledger(tmp_path / "ledger")
    assert ledger.retain_eval(asdict(plan)) is None
    kept = ledger.keep_retain_eval(asdict(plan), evaluated)
    again = Ledger(tmp_path / "ledger").retain_eval(asdict(plan))   # the next machine
    assert again == kept and sorted(p.name for p in kept.iterdir()) == ["eval_log_aggregated.json", "summary.json"]
    assert read_eval_output(again)["summary"]["mia"]["auc"] == 0.52
    (kept / "summary.json").unlink()   # a copy cut short is not a retain evaluation
    assert Ledger(tmp_path / "ledger").retain_eval(asdict(plan)) is None


def test_stage_times_add_up_over_machines_and_per_machine(tmp_path, monkeypatch):
    monkeypatch.setattr("benchmarks.ledger.machine", lambda: "first machine")
    Ledger(tmp_path / "ledger").add_stage("forget50-target", 600.0, 1100.0)
    monkeypatch.setattr("benchmarks.ledger.machine", lambda: "next machine")
    ledger = Ledger(tmp_path / "ledger")
    ledger.add_stage("forget50-target", 60.0, 100.0)
    assert ledger.data["stages"]["forget50-target"] == {
        "wall": 660.0, "cpu": 1200.0, "invocations": 2,
        "machines": {"first machine": {"wall": 600.0, "cpu": 1100.0, "invocations": 1},
                     "next machine": {"wall": 60.0, "cpu": 100.0, "invocations": 1}}}
    assert "| forget50-target | 11m00s | 20m00s | 2 |" in stage_table(ledger)


@pytest.mark.parametrize("option", [["--methods", "ga,gradient_ascent"], ["--splits", "forget99"]])
def test_an_unknown_method_or_split_is_named_with_the_choices(option, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--forget50", "--runs-dir", "unused", *option])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert option[1].split(",")[-1] in error and ("grad_diff" in error or "forget05" in error)


def test_the_weights_digest_tells_one_byte_apart(tmp_path):
    from core.models import weights_digest

    first, second, third = (tmp_path / name for name in ("first", "second", "third"))
    for folder, content in ((first, b"\x00" * 100), (second, b"\x00" * 100), (third, b"\x00" * 99 + b"\x01")):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(content)
    assert weights_digest(first) == weights_digest(second) != weights_digest(third)


def test_a_second_invocation_on_one_record_is_refused_while_the_first_measures(tmp_path):
    import subprocess
    import sys

    measuring = Ledger(tmp_path / "ledger")
    measuring.hold()   # this process measures into it, as long as the ledger lives
    second = subprocess.run([sys.executable, "-c", "import sys; from benchmarks.ledger import Ledger; "
                             "Ledger(__import__('pathlib').Path(sys.argv[1])).hold()", str(tmp_path / "ledger")],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert second.returncode == 1
    assert f"another invocation (pid {os.getpid()})" in second.stderr and "--results" in second.stderr
