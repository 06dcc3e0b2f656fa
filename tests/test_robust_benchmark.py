"""benchmarks/robust.py's glue on tiny runs: a chosen epoch's checkpoint becomes a run the audit takes, with
that checkpoint's weights; the best-checkpoint rule picks across learning rates; the report reads a real
audit (with control) back out of the record and checks the issue's goal by its rule."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from audit import recovery, run_audit
from benchmarks import robust, robust_plans, robust_report
from benchmarks.ledger import Ledger
from conftest import train_tiny_run
from core.checkpoint import WEIGHTS
from core.runs import RunDir

FAST = dict(max_samples=4, max_new_tokens=4, batch_size=4, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_model_dir):
    """A tiny full fine-tuning run with a checkpoint after step 2, and a never-learned control run."""
    run = train_tiny_run(tmp_path_factory.mktemp("swept"), tiny_model_dir, max_steps=4, save_steps=2,
                         save_total_limit=5)
    control = train_tiny_run(tmp_path_factory.mktemp("control"), tiny_model_dir, method="sft", max_steps=2, lr=1e-4)
    return run.out, control.out


def test_a_checkpoint_becomes_a_run_with_its_weights_that_the_audit_takes(swept, tmp_path):
    run, control = swept
    checkpoint = RunDir(run).checkpoints_dir / "step-000002"
    derived = tmp_path / "epoch1"
    robust.checkpoint_as_run(run, checkpoint, derived)
    assert RunDir(derived).holds_run() and RunDir(derived).final_model_kind() is not None
    assert not (derived / ".model-staging").exists()
    saved = load_file(str(checkpoint / WEIGHTS))
    final = {k: v for p in RunDir(derived).model_dir.glob("*.safetensors") for k, v in load_file(p).items()}
    shared = [name for name in saved if name in final]
    assert len(shared) >= 4 and all(torch.equal(saved[n], final[n]) for n in shared)
    assert not all(torch.equal(saved[n], f) for n, f in
                   {k: v for p in RunDir(run).model_dir.glob("*.safetensors") for k, v in load_file(p).items()}.items()
                   if n in saved), "the derived run must hold step 2, not the final model"
    options = {"relearn_steps": 1, "relearn_lr": "x1"}
    report = run_audit(derived, derived / "audit", ["relearn"], control=str(control), log=lambda m: None,
                       options=options, **FAST)
    assert report["results"][0]["judged_by"] == "residual"
    # a benchmark stopped between two splits takes a split's finished audit back only with the same settings
    same = {"seeds": 1, "attacks": ["relearn"], "max_samples": FAST["max_samples"]}
    kept = robust.finished_split(derived / "audit", control, same, options)
    assert kept is not None and kept["results"][0]["residual"] == report["results"][0]["residual"]
    assert robust.finished_split(derived / "audit", control, {**same, "seeds": 2}, options) is None
    assert robust.finished_split(derived / "audit", control, {**same, "max_samples": 2}, options) is None
    assert robust.finished_split(derived / "audit", run, same, options) is None
    assert robust.finished_split(derived / "audit", control, same, {**options, "relearn_split": "group"}) is None
    assert robust.finished_split(tmp_path / "nothing", control, same, options) is None


def test_the_control_sanity_row_reads_zero_by_construction(swept, tmp_path):
    """The control audited as if it were the unlearned model (robust.py's sanity row): attacked exactly as the
    control is, so every defined residual is 0, through the whole pipeline (run folder, audit, control). The
    target's row (~1) needs a target that learned the forget set: the benchmark checks it on real data."""
    run, control = swept
    robust.model_as_run(RunDir(run).config(), RunDir(control).model_dir, tmp_path / "control-row")
    assert RunDir(tmp_path / "control-row").base_model() == RunDir(run).base_model()
    report = run_audit(tmp_path / "control-row", tmp_path / "audit", ["relearn"], control=str(control),
                       log=lambda m: None, options={"relearn_steps": 1, "relearn_lr": "x1"}, **FAST)
    residual = report["results"][0]["residual"]
    assert residual["nll"] == 0.0 and all(value == 0.0 for value in residual.values() if value is not None)


def point(epoch: int, fq: float, mu: float) -> dict:
    return {"epoch": epoch, "fq": fq, "mu": mu}


def test_the_best_checkpoint_rule_picks_across_learning_rates():
    target = point(0, 0.01, 1.0)
    curves = {1e-5: [target, point(1, 0.2, 0.95), point(2, 0.3, 0.92)],
              2e-5: [target, point(1, 0.5, 0.91), point(2, 0.9, 0.5)]}   # 0.9 at MU 0.5: below the floor
    assert robust_plans.choose(robust_plans.BY_KEY["npo_rt"], curves) == {"lr": 2e-5, "epoch": 1, "meets_floor": True}
    # NPO+WA's model is its final average: an earlier epoch (its raw weights) is never chosen, nor shown
    assert robust_plans.choose(robust_plans.BY_KEY["npo_wa"], curves) == {"lr": 1e-5, "epoch": 2, "meets_floor": True}
    assert robust_report._best_of(robust_plans.BY_KEY["npo_wa"], curves[2e-5])["epoch"] == 2
    assert robust_report._best_of(robust_plans.BY_KEY["npo_rt"], curves[2e-5])["epoch"] == 1


def test_the_report_reads_the_audit_back_and_judges_the_goal(swept, tmp_path):
    run, control = swept
    ledger = Ledger(tmp_path / "record")
    variant = robust_plans.BY_KEY["npo_rt"]
    target = point(0, 0.01, 1.0)
    for lr in variant.lrs:   # a complete sweep: FQ 0.5 at MU 0.95x at the middle rate
        settings = robust_plans.sweep_settings(lr)
        ledger.keep_models(settings, target, point(0, 1.0, 1.0), "digest")
        ledger.keep_curve(settings, variant.key, [target, point(1, 0.5 if lr == variant.lrs[1] else 0.05, 0.95)], None)
    report = run_audit(run, tmp_path / "audit", ["relearn"], control=str(control), log=lambda m: None,
                       options={"relearn_steps": 1, "relearn_lr": "x1"}, seeds=2, **FAST)
    choice = {"lr": variant.lrs[1], "epoch": 1, "meets_floor": True}
    ledger.data["audits"] = {"npo_rt": {"choice": choice, "splits": {"example": robust.summarised(report)}}}
    ledger.data["sanity"] = {"control": {"splits": {"example": robust.summarised(report)}}}
    ledger.data[robust_plans.MINI] = {"splits": {"example": robust.summarised(report)}}
    rows = {row["key"]: row for row in robust_report.rows(ledger)}
    row = rows["npo_rt"]
    assert row["choice"] == choice and row["fq"] == 0.5 and row["mu_ratio"] == pytest.approx(0.95)
    relearn = next(r for r in report["results"] if r["name"] == "relearn")
    assert robust_report.relearn_residuals(row["audit"]) == [(relearn["residual"]["nll"],
                                                              relearn["residual_interval"]["nll"]), (None, None)]
    assert robust_report.meets_goal(row) is False   # no 4-bit attack measured: the goal cannot be met
    assert "choice" not in rows["npo_sam"] and rows["npo_sam"]["swept"] == []
    kept = "# Audit\n\nby hand\n\n<!-- robust.py summary: start -->\nold\n<!-- robust.py summary: end -->\n\nhistory\n"
    (tmp_path / "audit.md").write_text(kept)
    text = robust_report.write_report(ledger, tmp_path)
    summary = (tmp_path / "audit.md").read_text()   # audit.md's summary block is rewritten, the rest kept
    assert summary.startswith("# Audit\n\nby hand\n\n") and summary.endswith("\n\nhistory\n") and "old" not in summary
    assert f"| NPO+RT | {robust_report.cell(relearn['residual']['nll'], relearn['residual_interval']['nll'])} | - |" \
        in summary and "1 of " in summary
    outcome = "undone" if relearn["verdict"] == "shallow" else "not decided"   # one split: no other verdict
    assert f"{robust_report.OUTCOMES[outcome]}: NPO+RT" in summary
    assert f"| NPO+RT | {variant.lrs[1]:g}, 1 | 0.5 | 0.95 |" in text
    assert "Not measured yet: NPO+RT, then UNDO (swept: nothing); NPO+SAM (swept: nothing)" in text and (tmp_path / "robust.png").is_file()
    forget = relearn["forget"]   # the control's forget NLL before and after its own relearning
    learned = f"{forget['control']['nll']:.2f} -> {forget['control_attacked']['nll']:.2f}"
    assert f"| {robust_plans.SANITY['control']} | {robust_report.cell(relearn['residual']['nll'])}" in text
    assert learned in text.split("## Sanity rows")[1]
    assert f"| mini-TOFU NPO+RT | {robust_report.cell(relearn['residual']['nll'])}" in text


def test_every_row_is_measured_in_order_at_the_protocols_rate():
    assert robust_plans.PROTOCOL_LR == robust_plans.base_plan().unlearn_lr
    assert sorted(robust_plans.ORDER) == sorted([*robust_plans.BY_KEY, *robust_plans.SANITY, robust_plans.MINI])
    assert robust_plans.ORDER[:3] == ("npo_rt", "target", "control")


def audit_of(residual_upper: float | None, four_bit: float, group_upper: float | None = 0.1,
             with_group: bool = True) -> dict:
    """An audit of the example split, and of the group split unless with_group is False."""
    relearn = {"residual": {"nll": 0.1}, "residual_interval": {"nll": [0.0, residual_upper]}}
    quantized = {"recovery": {"nll": four_bit}}
    group = {"relearn": {"residual": {"nll": 0.05}, "residual_interval": {"nll": [0.0, group_upper]}}}
    return {"splits": {"example": {"results": {"relearn": relearn, "quantize: gguf-q4_0": quantized,
                                               "quantize: gguf-q4_k_m": {"recovery": {"nll": 0.0}}}},
                       **({"group": {"results": group}} if with_group else {})}}


@pytest.mark.parametrize("upper, four_bit, fq, mu_ratio, met", [
    (0.2, 0.05, 0.2, 0.95, True), (0.3, 0.05, 0.2, 0.95, False),   # the interval's upper bound decides
    (None, 0.05, 0.2, 0.95, False),                                 # an unbounded interval is not below anything
    (0.2, 0.15, 0.2, 0.95, False), (0.2, 0.05, 0.05, 0.95, False), (0.2, 0.05, 0.2, 0.85, False)])
def test_the_goal_rule(upper, four_bit, fq, mu_ratio, met):
    row = {"choice": {}, "audit": audit_of(upper, four_bit), "fq": fq, "mu_ratio": mu_ratio}
    assert robust_report.meets_goal(row) is met


@pytest.mark.parametrize("group_upper, with_group", [(0.3, True), (None, True), (0.1, False)])
def test_the_goal_needs_both_splits_below_the_threshold(group_upper, with_group):
    row = {"choice": {}, "audit": audit_of(0.2, 0.05, group_upper, with_group), "fq": 0.2, "mu_ratio": 0.95}
    assert robust_report.meets_goal(row) is False


def test_attacks_audited_before_their_intervals_are_measured_again():
    old = [{"name": "relearn", "residual_interval": {}}, {"name": "quantize: gguf-q4_0", "recovery": {"nll": 0.1}},
           {"name": "rephrase: plain", "recovery": {"nll": 0.2}, "recovery_interval": {"nll": [0.1, 0.3]}}]
    assert robust.without_intervals(old) == ["quantize"]
    assert robust.without_intervals(old[:1] + old[2:]) == []
    # nothing forgotten (the target's sanity row): no figure is defined, so there is no interval to measure
    assert robust.without_intervals([{"name": "quantize: gguf-q4_0", "recovery": {"nll": None}}]) == []
    recorded = {"settings": robust_plans.AUDIT, "splits": {"example": {"results": {
        name: {k: v for k, v in r.items() if k != "name"} for r in old for name in [r["name"]]}}}}
    assert not robust.complete(recorded)
    del recorded["splits"]["example"]["results"]["quantize: gguf-q4_0"]
    assert robust.complete(recorded) and not robust.complete({**recorded, "settings": {}})


def test_the_report_shows_4_bit_and_rephrasing_with_their_intervals():
    audit = {"splits": {"example": {"results": {
        "quantize: gguf-q4_0": {"recovery": {"nll": 0.06}, "recovery_interval": {"nll": [0.01, 0.11]}},
        "quantize: gguf-q4_k_m": {"recovery": {"nll": 0.1}},     # audited before intervals
        "rephrase: plain": {"recovery": {"nll": 0.19}, "recovery_interval": {"nll": [0.1, 0.3]}},
        "rephrase: few-shot": {"recovery": {"nll": 0.32}, "recovery_interval": {"nll": [0.2, None]}}}}}}
    assert robust_report.four_bit_cells(audit) == "0.06 [0.01, 0.11] / 0.10"
    assert robust_report.cell(*robust_report.worst_rephrasing(audit)) == "0.32 [0.20, ?]"
    assert robust_report.worst_rephrasing(None) == (None, None)


@pytest.mark.parametrize("example, group, outcome", [
    ("shallow", "robust", "undone"), ("robust", "robust", "robust"), ("robust", None, "not decided"),
    ("partial", "robust", "partial"), ("inconclusive: wide", "robust", "not decided"),
    # an interval spanning only 0.25 beside a partial split: partial either way; beside a robust one, undecided
    ("partial", recovery.INCONCLUSIVE_ROBUST, "partial"), (recovery.INCONCLUSIVE_ROBUST, "robust", "not decided"),
    ("partial", recovery.INCONCLUSIVE_SHALLOW, "not decided")])
def test_what_relearning_did_once_the_control_is_subtracted(example, group, outcome):
    splits = {"example": example, "group": group}
    audit = {"splits": {split: {"results": {"relearn": {"verdict": verdict}}}
                        for split, verdict in splits.items() if verdict}}
    assert robust_report.relearning_outcome(audit) == outcome


def test_the_report_says_where_the_attacker_did_best_at_the_highest_rate_tried():
    highest, lowest = max(robust_report.ATTACK_RATES), 1.5e-5
    # recorded before the sweep reached: judged against the grid
    audit = {"splits": {"example": {"results": {"relearn": {"lr": lowest}, "benign": {"lr": highest}}},
                        "group": {"results": {"relearn": {"lr": highest}}}}}
    assert robust_report.at_the_highest_rate(audit) == ["relearn by author at 0.00015", "benign at 0.00015"]
    rows = [{"label": "NPO+RT", "audit": audit}, {"label": "GA", "audit": None}]
    assert robust_report.edge_note(rows)[0].startswith("The attacker did best at the highest learning rate tried "
                                                       "for: NPO+RT (relearn by author at 0.00015, benign at 0.00015).")
    assert robust_report.edge_note(rows[1:]) == []
    # recorded with the rates tried: the audit's own judgement, after the reach (1.35e-3 still the worst,
    # 4.5e-4 a peak inside)
    reached = {"splits": {"example": {"results": {
        "relearn": {"lr": 4.5e-4, "at_edge": None, "rates": [1.5e-5, 5e-5, 1.5e-4, 4.5e-4, 1.35e-3]},
        "benign": {"lr": 1.35e-3, "at_edge": "highest", "rates": [1.5e-5, 5e-5, 1.5e-4, 4.5e-4, 1.35e-3]}}}}}
    assert robust_report.at_the_highest_rate(reached) == ["benign at 0.00135"]


def test_a_split_audited_before_the_sweep_reached_is_widened_not_redone(swept, tmp_path):
    run, control = swept
    options = {"relearn_steps": 1, "relearn_lr": "x1,x3", "relearn_lr_extend": 0}
    run_audit(run, tmp_path / "audit", ["relearn"], control=str(control), log=lambda m: None, options=options,
              **FAST)
    same = {"seeds": 1, "attacks": ["relearn"], "max_samples": FAST["max_samples"]}
    wider = {**options, "relearn_lr_extend": 2}
    assert robust.finished_split(tmp_path / "audit", control, same, wider) is None
    assert robust.finished_split(tmp_path / "audit", control, same, wider, apart_from_reach=True) is not None
    assert robust.finished_split(tmp_path / "audit", control, same, {**wider, "relearn_steps": 2},
                                 apart_from_reach=True) is None
    assert robust.fine_tuning(["relearn", "benign", "quantize", "rephrase"]) == ["relearn", "benign"]


def test_step_costs_compare_seconds_only_within_one_machine(tmp_path, monkeypatch):
    """A record from before machines were named keeps its seconds under one unnamed machine; a method timed on
    a new machine is set against NPO+RT's timing run there, never against another machine's seconds."""
    import json

    from benchmarks import ledger as ledger_module

    steps = robust_plans.sweep_steps()
    folder = tmp_path / "record"
    folder.mkdir()
    old = {"robust/npo_rt-lr5e-05": {"wall": 1.0, "cpu": 4.0 * steps, "invocations": 1},
           "robust/npo_wa-lr5e-05": {"wall": 1.0, "cpu": 5.0 * steps, "invocations": 1}}
    (folder / "record.json").write_text(json.dumps({"stages": old}))
    ledger = Ledger(folder)
    assert ledger.data["stages"]["robust/npo_rt-lr5e-05"]["machines"] == {
        ledger_module.UNRECORDED_MACHINE: {"wall": 1.0, "cpu": 4.0 * steps, "invocations": 1}}
    npo_rt, npo_wa, mudman = (robust_plans.BY_KEY[k] for k in ("npo_rt", "npo_wa", "mudman"))

    monkeypatch.setattr(ledger_module, "machine", lambda: "fast machine")
    ledger.add_stage("robust/npo_wa-lr0.0001", 1.0, 1.0 * steps)    # twice as fast here as NPO+RT below
    ledger.add_stage("robust/mudman-lr0.001", 1.0, 3.0 * steps)
    assert robust_plans.step_cost(ledger, mudman, npo_rt, steps) == {}   # NPO+RT not timed on this machine
    ledger.add_stage(robust_plans.BASELINE_TIMING, 1.0, 2.0 * steps)
    assert robust_plans.step_seconds(ledger, npo_rt, steps) == {ledger_module.UNRECORDED_MACHINE: 4.0,
                                                                "fast machine": 2.0}
    assert robust_plans.step_cost(ledger, mudman, npo_rt, steps) == {"fast machine": 1.5}
    assert robust_plans.step_cost(ledger, npo_wa, npo_rt, steps) == {ledger_module.UNRECORDED_MACHINE: 1.25,
                                                                     "fast machine": 0.5}
    # the median over a machine's runs: a resumed run (few steps recorded) or a crowded one moves it little
    ledger.add_stage("robust/mudman-lr0.0003", 1.0, 0.5 * steps)
    ledger.add_stage("robust/mudman-lr0.003", 1.0, 3.2 * steps)
    assert robust_plans.step_cost(ledger, mudman, npo_rt, steps) == {"fast machine": 1.5}
    stage = Ledger(folder).data["stages"]["robust/npo_wa-lr0.0001"]   # what was saved
    assert stage["invocations"] == 1 and stage["machines"] == {"fast machine": {"wall": 1.0, "cpu": 1.0 * steps,
                                                                                "invocations": 1}}
    # a stage whose invocations counted their steps: a run stopped after 10 steps and resumed from its
    # checkpoint at step 8 took 10 + (steps - 8); its seconds per step are over those, not over `steps`
    ledger.add_stage("robust/npo_sam-lr5e-05", 1.0, 3.0 * 10, steps=10)
    ledger.add_stage("robust/npo_sam-lr5e-05", 1.0, 3.0 * (steps - 8), steps=steps - 8)
    assert robust_plans.step_seconds(ledger, robust_plans.BY_KEY["npo_sam"], steps) == {
        "fast machine": pytest.approx(3.0)}
    # one invocation that did not count (recorded before, or one that failed) leaves the whole run's steps
    ledger.add_stage("robust/npo_sam-lr0.0001", 1.0, 3.0 * steps)
    ledger.add_stage("robust/npo_sam-lr0.0001", 1.0, 0.0, steps=0)
    assert robust_plans._steps_taken(ledger.data["stages"]["robust/npo_sam-lr0.0001"]["machines"]["fast machine"],
                                     steps) == steps


def test_a_chosen_run_this_machine_lacks_is_measured_again_before_its_audit(tmp_path, monkeypatch):
    """The record outlives the runs: where the chosen (learning rate, epoch) has no weights here, that rate is
    measured again (the record keeping the curve it replaces), the choice made again, and the weights audited
    are the ones the row's figures come from."""
    variant = robust_plans.BY_KEY["npo_wa"]
    low, middle, high = variant.lrs
    target = point(0, 0.01, 1.0)
    ledger = Ledger(tmp_path / "record")
    recorded = {low: [target, point(5, 0.05, 0.95)], middle: [target, point(5, 0.9, 0.95)],
                high: [target, point(5, 0.2, 0.95)]}
    for lr, points in recorded.items():
        ledger.keep_models(robust_plans.sweep_settings(lr), target, point(0, 1.0, 1.0), "digest")
        ledger.keep_curve(robust_plans.sweep_settings(lr), variant.key, points, None)
    bench = type("FakeBench", (), {"ledger": ledger, "say": lambda self, message: None})()
    bench_robust = robust.Robust.__new__(robust.Robust)
    bench_robust.bench, bench_robust.base, bench_robust.work = bench, robust_plans.base_plan(), tmp_path / "robust"
    forget = tmp_path / "forget.jsonl"
    forget.write_text('{"question": "q", "answer": "a"}\n' * 40)
    bench_robust.files = {"forget": forget}
    # here the middle rate, measured again, falls below the high one; only the high one's run is then made
    again = {middle: [target, point(5, 0.1, 0.95)], high: [target, point(5, 0.3, 0.95)]}
    measured = []

    def sweep(variant, lr, again_=False, **kwargs):
        measured.append(lr)
        points = again[lr]
        ledger.keep_curve(robust_plans.sweep_settings(lr), variant.key, points, None)
        if lr == high:
            (bench_robust.run_dir(variant, lr) / "model").mkdir(parents=True)
        return points

    monkeypatch.setattr(bench_robust, "sweep", lambda variant, lr, again=False: sweep(variant, lr, again))
    monkeypatch.setattr(bench_robust, "holds", lambda variant, choice:
                        (bench_robust.run_dir(variant, choice["lr"]) / "model").is_dir())
    audited = []
    monkeypatch.setattr(bench_robust, "_audit_with_control", lambda run, label: audited.append(run) or {})
    row = bench_robust.audit(variant, recorded)
    assert measured == [middle, high] and audited == [bench_robust.run_dir(variant, high)]
    assert row["choice"]["lr"] == high and ledger.data["audits"][variant.key] is row
    superseded = ledger.plan(robust_plans.sweep_settings(middle))["superseded"][variant.key]
    assert [entry["points"] for entry in superseded] == [recorded[middle]]
    assert ledger.plan(robust_plans.sweep_settings(middle))["curves"][variant.key] == again[middle]


def test_holds_finds_the_chosen_epochs_weights(tmp_path):
    from core.checkpoint import WEIGHTS

    bench_robust = robust.Robust.__new__(robust.Robust)
    bench_robust.base, bench_robust.work = robust_plans.base_plan(), tmp_path
    forget = tmp_path / "forget.jsonl"
    forget.write_text('{"question": "q", "answer": "a"}\n' * 40)   # batch 4: 10 steps per epoch
    bench_robust.files = {"forget": forget}
    variant = robust_plans.BY_KEY["npo_wa"]
    run = bench_robust.run_dir(variant, variant.lrs[0])
    epoch3 = {"lr": variant.lrs[0], "epoch": 3}
    assert not bench_robust.holds(variant, epoch3)
    (run / "checkpoints" / "step-000030").mkdir(parents=True)
    assert not bench_robust.holds(variant, epoch3)    # a checkpoint whose weights were pruned
    (run / "checkpoints" / "step-000030" / WEIGHTS).write_bytes(b"")
    assert bench_robust.holds(variant, epoch3)
    assert not bench_robust.holds(variant, {"lr": variant.lrs[0], "epoch": 5})


def test_the_report_says_which_machines_measured_it_and_what_a_fresh_one_measured_again(tmp_path, monkeypatch):
    from benchmarks import ledger as ledger_module

    ledger = Ledger(tmp_path / "record")
    variant = robust_plans.BY_KEY["npo_wa"]
    settings = robust_plans.sweep_settings(variant.lrs[1])
    target = point(0, 0.01, 1.0)
    ledger.keep_models(settings, target, point(0, 1.0, 1.0), "first weights")
    ledger.keep_curve(settings, variant.key, [target, point(5, 0.9, 0.95)], None)
    monkeypatch.setattr(ledger_module, "machine", lambda: "fresh machine")
    ledger.add_stage("robust/npo_wa-lr5e-05", 1.0, 2.0)
    assert "the target was learned again" in ledger.keep_models(settings, point(0, 0.02, 1.0), point(0, 1.0, 1.0),
                                                                "other weights")
    ledger.keep_curve(settings, variant.key, [target, point(5, 0.5, 0.95)], None)
    text = "\n".join(robust_report.provenance(ledger))
    assert "Measured on: fresh machine." in text
    assert "its figures that changed: fq 0.01 -> 0.02." in text
    assert f"NPO+WA at lr {variant.lrs[1]:g} on " in text


def test_utility_needed_settles_the_choice_every_mu_would_make():
    """Model Utility read lazily (robust_plans.utility_needed): on random sweeps with tied FQ levels the choice
    and each learning rate's best are those made with every MU known, from fewer MU evaluations."""
    import random

    rng = random.Random(0)
    read, every = 0, 0
    for variant in (robust_plans.BY_KEY["npo_rt"], robust_plans.BY_KEY["npo_wa"]):
        for _ in range(300):
            target = point(0, 0.01, 1.0)
            full = {lr: [target, *(point(e, rng.choice((0.05, 0.3, 0.9, 0.99)), rng.uniform(0.5, 1.05))
                                   for e in range(1, 6))] for lr in variant.lrs}
            lazy = {}
            for lr, points in full.items():
                known = [points[0], *({**p, "mu": None} for p in points[1:])]
                while needed := robust_plans.utility_needed(variant, known):
                    assert all(next(p for p in known if p["epoch"] == e)["mu"] is None for e in needed)
                    known = [next(f for f in points if f["epoch"] == p["epoch"]) if p["epoch"] in needed else p
                             for p in known]
                lazy[lr] = known
                read += sum(p["mu"] is not None for p in known[1:])
                every += len(variant.epochs(points))
                assert robust_report._best_of(variant, known) == robust_report._best_of(variant, points)
            assert robust_plans.choose(variant, lazy) == robust_plans.choose(variant, full)
    assert read < 0.8 * every       # here ~71 %; on the recorded sweeps 1-4 of 15


def test_a_sweep_reads_model_utility_only_where_the_rule_needs_it(tmp_path, monkeypatch):
    """unlearn_curve with utility_needed: every epoch evaluated for Forget Quality first, then the ones the
    rule reads with the full figures; the others' points keep MU None."""
    from benchmarks import tofu_stages

    run = tmp_path / "run"
    for step in (10, 20):
        (run / "checkpoints" / f"step-{step:06d}").mkdir(parents=True)
    forget = tmp_path / "forget.jsonl"
    forget.write_text('{"question": "q", "answer": "a"}\n' * 40)   # batch 4: 10 steps per epoch
    figures = {1: (0.9, 0.5), 2: (0.9, 0.95), 3: (0.3, 1.0)}      # epoch: (FQ, MU); MU floor 0.9
    calls = []

    def evaluate(model, out, plan, reference, retain_eval, holdout, which):
        epoch = int(out.name.rsplit("epoch", 1)[1])
        calls.append((epoch, which))
        fq, mu = figures[epoch]
        return {"fq": fq, "mu": None if which == "forget_quality" else mu}

    bench = type("FakeBench", (), {"evaluate": staticmethod(evaluate)})()
    monkeypatch.setattr(tofu_stages, "unlearn_run", lambda *args, **kwargs: run)
    monkeypatch.setattr(tofu_stages, "_point", lambda summary, out: summary)
    plan = type("Plan", (), {"unlearn_batch": 4, "unlearn_epochs": 3})()
    learned = tofu_stages.Learned(run, None, None, None, {"fq": 0.01, "mu": 1.0})
    variant = robust_plans.BY_KEY["npo_rt"]
    _, points, _, _ = tofu_stages.unlearn_curve(bench, plan, {"forget": forget}, learned, run, tmp_path / "eval",
                                                "npo_rt", figures="selection",
                                                utility_needed=lambda p: robust_plans.utility_needed(variant, p))
    assert calls == [(1, "forget_quality"), (2, "forget_quality"), (3, "forget_quality"), (1, "selection"),
                     (2, "selection")]
    assert [p["mu"] for p in points] == [1.0, 0.5, 0.95, None]
    assert robust_plans.choose(variant, {5e-5: points}) == {"lr": 5e-5, "epoch": 2, "meets_floor": True}


def test_a_cached_evaluation_answers_only_for_the_figures_it_holds(tmp_path):
    import json

    from benchmarks.tofu_stages import Bench
    from core.checkpoint import STATE

    checkpoint = tmp_path / "checkpoints" / "step-000010"
    checkpoint.mkdir(parents=True)
    (checkpoint / STATE).write_text("{}")        # its weights dropped: evaluating it again stops with a message
    out = tmp_path / "eval"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"figures": {}, "figures_set": "forget_quality"}))
    bench = Bench(tmp_path / "runs", "cpu", Ledger(tmp_path / "record"))
    assert bench.evaluate(str(checkpoint), out, None, None, None, None, "forget_quality")["figures_set"] == \
        "forget_quality"
    with pytest.raises(SystemExit, match="weights were dropped"):
        bench.evaluate(str(checkpoint), out, None, None, None, None, "selection")


def test_a_sanity_row_audited_before_the_sweep_reached_stays_but_a_method_row_does_not():
    import json

    from benchmarks.robust_plans import AUDIT

    before = json.loads(json.dumps(AUDIT))
    before["options"] = {k: v for k, v in before["options"].items() if not k.endswith("_lr_extend")}
    del before["judged"]   # recorded before the verdict was taken among the rates with every seed
    recorded = {"settings": before, "splits": {"example": {"results": {"relearn": {"residual": {"nll": 1.0}}}}}}
    assert not robust.complete(recorded) and robust.complete(recorded, reach_matters=False)
    assert robust.complete({**recorded, "settings": AUDIT})
    other = {**before, "seeds_at": "all"}
    assert not robust.complete({**recorded, "settings": other}, reach_matters=False)


def test_a_sweep_whose_attacker_s_best_moved_under_today_s_rules_gets_only_its_missing_points(swept, tmp_path,
                                                                                              monkeypatch):
    """A recorded audit is judged again when the rule for the attacker's best changes; where the new rule
    takes another rate, the repeats there (and any reach past it) are measured, the other points reused."""
    import json

    from audit import unsettled_sweeps
    from audit.attacks import finetune

    import shutil

    run, control = tmp_path / "run", Path(swept[1])
    shutil.copytree(swept[0], run)      # the audit's folders go inside the run
    options = {"relearn_steps": 1, "relearn_lr": "x1,x3", "relearn_lr_extend": 0}
    monkeypatch.setattr(robust, "AUDIT", {**robust.AUDIT, "options": options, "splits": {
        "example": {"max_samples": FAST["max_samples"], "seeds": 2, "attacks": ["relearn"]}}})
    said, trained = [], []
    bench = type("FakeBench", (), {"say": lambda self, message: said.append(message), "device": "cpu",
                                   "record_stage": lambda self, *args: None})()
    bench_robust = robust.Robust.__new__(robust.Robust)
    bench_robust.bench, bench_robust.work = bench, tmp_path / "robust"
    real_finetuned = finetune.finetuned
    monkeypatch.setattr(finetune, "finetuned", lambda context, start, examples, steps, lr, seed, name:
                        trained.append((seed, lr)) or real_finetuned(context, start, examples, steps, lr, seed, name))
    bench_robust._audit_with_control(run, "tiny", control=control)
    path = run / "audit-example" / "audit.json"
    report = json.loads(path.read_text())
    relearn = report["results"][0]
    best, = {p["lr"] for p in relearn["points"] if p["seed"] == 43}
    other, = {p["lr"] for p in relearn["points"]} - {best}
    assert relearn["lr"] == best and unsettled_sweeps(report) == [] and len(trained) == 6   # 3 points, 2 models
    # as if judged by a rule that took the other rate: seed 43 repeated there
    for p in relearn["points"]:
        if p["seed"] == 43:
            p["lr"] = other
    path.write_text(json.dumps(report))
    assert unsettled_sweeps(json.loads(path.read_text())) == ["relearn"]
    trained.clear()
    summary = bench_robust._audit_with_control(run, "tiny", control=control)
    assert any("the attacker's best moved under today's rules for relearn" in m for m in said)
    assert trained == [(43, best)]   # the unlearned model only: the control's point is in the control cache
    updated = json.loads(path.read_text())
    assert sorted((p["seed"], p["lr"]) for p in updated["results"][0]["points"]) == \
        sorted([(42, best), (42, other), (43, best)])
    assert unsettled_sweeps(updated) == [] and summary["splits"]["example"]["results"]["relearn"]["lr"] == best
