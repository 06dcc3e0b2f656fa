"""The audit that can be trusted (issue 31): the residual against a never-learned control and the bootstrap
interval computed by hand, verdicts on intervals, the learning-rate sweep, the group split, sanity rows
(the control against itself 0, the original against a control 1), bad input, and a stopped audit resumed."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from audit import recovery, run_audit
from audit.attacks.base import Sweep, swept_values
from audit.groups import forget_groups, spread_over_groups
from audit.attacks.relearn import relearn_splits, split
from conftest import build_tiny_model, quiet
from core.errors import UnlearnError
from core.trainer import train
from test_audit import FAST, lora_run  # noqa: F401  (the tiny LoRA run the audit's own tests attack)
from unlearn.cli import main

ONE_ATTACK = dict(FAST, max_samples=4, options={"relearn_steps": 1, "relearn_lr": "x1"})


def test_the_residual_by_hand():
    # NLL 2.0 original, 4.0 for the control after the attack, 3.0 for the unlearned model after it: halfway
    assert recovery.residual(2.0, 3.0, 4.0, "nll") == pytest.approx(0.5)
    # probability (higher = more known): 0.8 original, 0.2 control attacked, 0.5 unlearned attacked
    assert recovery.residual(0.8, 0.5, 0.2, "prob") == pytest.approx(0.5)
    assert recovery.residual(0.8, 0.9, 0.2, "rougeL") == pytest.approx(7 / 6)     # beyond the original
    # sanity rows by construction: the original itself 1, the control itself 0
    assert recovery.residual(2.0, 2.0, 4.0, "nll") == 1.0 and recovery.residual(0.8, 0.8, 0.2, "prob") == 1.0
    assert recovery.residual(2.0, 4.0, 4.0, "nll") == 0.0 and recovery.residual(0.8, 0.2, 0.2, "rougeL") == 0.0
    # the control relearned to within the noise floor of the original: nothing to tell apart
    assert recovery.residual(2.0, 2.5, 2.03, "nll") is None
    assert recovery.residual(0.8, 0.5, 0.795, "prob") is None


def _each(values: list[float]) -> dict:
    return {"rougeL": values}


def test_the_bootstrap_interval_by_hand():
    # one seed, two examples: original 1, unlearned 0, attacked 0 and 1 -> recovery 0.5. A resample of two
    # examples is {0,0}, {0,1} or {1,1} (1/4, 1/2, 1/4): recovery 0, 0.5 or 1, so the 95 % interval is [0, 1]
    seed = {"original": _each([1.0, 1.0]), "unlearned": _each([0.0, 0.0]), "attacked": _each([0.0, 1.0])}
    assert recovery.point_and_interval([seed], "rougeL", "recovery") == (0.5, [0.0, 1.0])
    # no spread at all: the interval is the point
    flat = {**seed, "attacked": _each([0.5, 0.5])}
    assert recovery.point_and_interval([flat], "rougeL", "recovery") == (0.5, [0.5, 0.5])
    # two seeds without spread inside, recoveries 0 and 1: the point is their mean, the interval spans both
    zero, one = {**seed, "attacked": _each([0.0, 0.0])}, {**seed, "attacked": _each([1.0, 1.0])}
    assert recovery.point_and_interval([zero, one], "rougeL", "recovery") == (0.5, [0.0, 1.0])
    # a larger sample: the percentile interval of a mean is close to mean +- 1.96 standard errors
    values = np.random.default_rng(1).random(400)
    wide = {"original": _each([1.0] * 400), "unlearned": _each([0.0] * 400), "attacked": _each(list(values))}
    point, (low, high) = recovery.point_and_interval([wide], "rougeL", "recovery")
    half = 1.96 * values.std() / np.sqrt(len(values))
    assert point == pytest.approx(values.mean()) and low == pytest.approx(point - half, abs=0.2 * half)
    assert high == pytest.approx(point + half, abs=0.2 * half)
    # the NLL is pooled over answer tokens: summed NLL 2+6 over 1+3 tokens is 2.0 nats per token
    assert recovery.figure_mean({"nll": [2.0, 6.0], "tokens": [1, 3]}, "nll", np.arange(2)) == 2.0


def test_an_attack_measured_once_gets_an_interval_over_its_examples():
    from audit import judged

    # rephrasing, two questions asked plainly: ROUGE-L 0.8 -> 0.4 usually (a 50 % drop) on each; asked so, the
    # original answers 0.4 and 0.8, the unlearned model 0.2 and 0.8. Pooled: 0.6 -> 0.5, a 16.7 % drop, so a
    # third of the effect is left and the recovery is 2/3; resampling {q1,q1}: 50 % drop -> 0, {q2,q2}: none -> 1
    each = {"original": _each([0.8, 0.8]), "unlearned": _each([0.4, 0.4]), "attacked": _each([0.2, 0.8]),
            "attacked_original": _each([0.4, 0.8])}
    assert recovery.intervals_over_examples(each) == {"rougeL": [0.0, 1.0]}
    means = {stage: {"rougeL": float(np.mean(v["rougeL"]))} for stage, v in each.items()}
    result = {"name": "rephrase: plain", "forget": {"set": "forget", **means}, "forget_each": each}
    found = judged(result)
    assert found["recovery"]["rougeL"] == pytest.approx(2 / 3)     # the point: the formula on the means
    assert found["recovery_interval"] == {"rougeL": [0.0, 1.0]} and found["verdict"].startswith("inconclusive")
    # quantisation: the plain recovery, NLL pooled over answer tokens. Summed NLL (tokens 1 and 3): original 1
    # and 3, unlearned 3 and 9 (3 nats per token), quantised 2 and 6: 2 per token, half of the gain undone on
    # either answer, so every resample reads 0.5
    nll = {"original": {"nll": [1.0, 3.0], "tokens": [1, 3]}, "unlearned": {"nll": [3.0, 9.0], "tokens": [1, 3]},
           "attacked": {"nll": [2.0, 6.0], "tokens": [1, 3]}}
    assert recovery.intervals_over_examples(nll) == {"nll": [pytest.approx(0.5), pytest.approx(0.5)]}
    # a result kept from before per-example figures has no interval, and the verdict it had
    assert "recovery_interval" not in judged({"name": "quantize: gguf-q4_0", "forget": {
        "set": "forget", "original": {"nll": 1.0}, "unlearned": {"nll": 3.0}, "attacked": {"nll": 2.9}}})


def test_the_array_recovery_is_the_recovery_elementwise():
    from core.recovery import recovery_array

    cases = [(2.0, 5.0, 3.5, "nll", None), (0.8, 0.2, 0.9, "rougeL", None), (2.0, 2.01, 3.0, "nll", None),
             (0.2, 2.2, 1.5, "nll", 0.5), (0.9, 0.45, 0.3, "rougeL", 0.4), (0.9, 0.45, 0.0, "rougeL", 0.005)]
    for figure in ("nll", "rougeL"):
        picked = [c for c in cases if c[3] == figure]
        for asked in (None, True):
            chosen = [c for c in picked if (c[4] is None) == (asked is None)]
            if not chosen:
                continue
            columns = [np.array([c[i] for c in chosen]) for i in range(3)]
            got = recovery_array(*columns, figure, np.array([c[4] for c in chosen]) if asked else None)
            expected = [recovery.recovery(*c[:3], figure, c[4]) for c in chosen]
            assert [None if np.isnan(g) else pytest.approx(g) for g in got] == expected


def test_a_worst_case_at_an_end_of_the_sweep_is_flagged():
    assert recovery.at_edge(1.5e-4, [1.5e-5, 5e-5, 1.5e-4]) == "highest"
    assert recovery.at_edge(1.5e-5, [1.5e-5, 5e-5, 1.5e-4]) == "lowest"
    assert recovery.at_edge(5e-5, [1.5e-5, 5e-5, 1.5e-4]) is None and recovery.at_edge(5e-5, [5e-5]) is None
    # through the judgement and into audit.md: residual 0.1 at the low rate, 0.4 at the high one
    each = lambda attacked: {"original": _each([1.0]), "attacked": _each([attacked]),   # noqa: E731
                             "control_attacked": _each([0.0]), "unlearned": _each([0.0])}
    points = [{"lr": lr, "seed": 42, "each": each(value)} for lr, value in ((1e-5, 0.1), (1e-4, 0.4))]
    judged = recovery.judge_points(points)
    assert judged["lr"] == 1e-4 and judged["at_edge"] == "highest"
    from audit.report import _sweep_section

    text = "\n".join(_sweep_section([{"name": "relearn", "sweep": judged["sweep"], **judged}], control=True))
    assert "relearn: the attacker did best at the highest learning rate tried (0.0001)" in text


def test_verdicts_rest_on_the_intervals():
    assert recovery.verdict({"nll": 0.1}, {"nll": [0.0, 0.2]}) == ("robust", 0.1)
    assert recovery.verdict({"nll": 0.1}, {"nll": [0.0, 0.3]})[0].startswith("inconclusive")
    assert recovery.verdict({"nll": 0.7}, {"nll": [0.55, 0.9]})[0] == "shallow"
    assert recovery.verdict({"nll": 0.7}, {"nll": [0.4, 0.9]})[0].startswith("inconclusive")
    assert recovery.verdict({"nll": 0.3, "prob": 0.1}, {"nll": [0.26, 0.45], "prob": [0.0, 0.2]})[0] == "partial"
    assert recovery.verdict({"nll": 0.1}, {"nll": [None, 0.2]})[0] == "robust"       # unbounded below
    assert recovery.verdict({"nll": 0.1}, {"nll": [0.0, None]})[0].startswith("inconclusive")
    assert recovery.overall({"a": "robust", "b": "inconclusive: x", "c": "partial"}) == "inconclusive"
    # an interval spanning 0.5 may be shallow; one spanning only 0.25 is partial or robust
    assert recovery.verdict({"nll": 0.23}, {"nll": [0.09, 0.28]})[0] == recovery.INCONCLUSIVE_ROBUST
    assert recovery.verdict({"nll": 0.45}, {"nll": [0.3, 0.6]})[0] == recovery.INCONCLUSIVE_SHALLOW
    assert recovery.verdict({"nll": 0.3}, {"nll": [0.1, 0.6]})[0] == recovery.INCONCLUSIVE_SHALLOW
    assert recovery.verdict_label(recovery.INCONCLUSIVE_ROBUST) == "inconclusive (spans 0.25)"
    assert recovery.verdict_label(recovery.INCONCLUSIVE_SHALLOW) == "inconclusive (spans 0.5)"
    assert recovery.verdict_label("inconclusive: written before") == "inconclusive"
    assert recovery.verdict_label("partial") == "partial"


@pytest.mark.parametrize("verdicts, weakest", [
    (("robust", recovery.INCONCLUSIVE_ROBUST), "inconclusive"),
    (("partial", recovery.INCONCLUSIVE_ROBUST), "partial"),      # partial beyond doubt; the other at most that
    (("partial", recovery.INCONCLUSIVE_SHALLOW), "inconclusive"),   # the other may be shallow
    (("shallow", recovery.INCONCLUSIVE_SHALLOW), "shallow"),
    (("partial", "inconclusive: written before the two were told apart"), "inconclusive"),
    (("undefined: nothing moved", "robust"), "robust"), (("undefined: nothing moved",), "undefined")])
def test_the_overall_verdict_is_the_one_whose_evidence_reaches_highest(verdicts, weakest):
    assert recovery.overall(dict(enumerate(verdicts))) == weakest


def test_the_attacker_s_best_rate_is_a_partial_one_over_one_that_only_may_reach_a_quarter():
    # found in the benchmark (NPO+RT, group split, seed 42): residual 0.23 [0.09, 0.28] at 1.5e-4 and
    # 0.33 [0.26, 0.45] at 4.5e-4; the repeats and the reach must follow 4.5e-4. Two examples a point: the
    # bootstrap interval of two values a, b is [a, b] (every draw's mean lies between them)
    # ROUGE-L (higher: more known): original 1, unlearned and control attacked 0, so the residual is `attacked`
    each = lambda residuals: {"original": _each([1.0, 1.0]), "attacked": _each(residuals),   # noqa: E731
                              "control_attacked": _each([0.0, 0.0]), "unlearned": _each([0.0, 0.0])}
    points = [{"lr": 1.5e-4, "seed": 42, "each": each([0.09, 0.37])},
              {"lr": 4.5e-4, "seed": 42, "each": each([0.26, 0.40])}]
    judged = recovery.judge_points(points)
    by_rate = {entry["lr"]: entry for entry in judged["sweep"]}
    assert by_rate[1.5e-4]["verdict"] == recovery.INCONCLUSIVE_ROBUST and by_rate[4.5e-4]["verdict"] == "partial"
    assert by_rate[1.5e-4]["residual_interval"]["rougeL"][1] > 0.25
    assert judged["lr"] == 4.5e-4 and judged["verdict"] == "partial" and judged["at_edge"] == "highest"
    # within one verdict the larger figure wins, as before
    points[1] = {"lr": 4.5e-4, "seed": 42, "each": each([0.10, 0.30])}
    assert recovery.judge_points(points)["lr"] == 1.5e-4


def test_a_sweep_recorded_under_the_old_order_is_unsettled_until_the_new_best_s_points_are_measured():
    from audit.attacks.finetune import settled

    each = lambda low, high: {"original": _each([1.0, 1.0]), "attacked": _each([low, high]),   # noqa: E731
                              "control_attacked": _each([0.0, 0.0]), "unlearned": _each([0.0, 0.0])}
    grid = [1.5e-5, 5e-5, 1.5e-4]
    # what the old order measured: the reach to 4.5e-4, then 1.5e-4 (0.23, inconclusive) taken over 4.5e-4
    # (0.33, partial), so the reach stopped and seed 43 repeated 1.5e-4
    points = [{"lr": lr, "seed": 42, "each": each(*values)} for lr, values in
              ((1.5e-5, (0.0, 0.1)), (5e-5, (0.05, 0.15)), (1.5e-4, (0.09, 0.37)), (4.5e-4, (0.26, 0.40)))]
    points.append({"lr": 1.5e-4, "seed": 43, "each": each(0.1, 0.3)})
    assert not settled(points, [42, 43], grid, "worst", 2)
    # today's order reaches past 4.5e-4 (1.35e-3 reads lower), then repeats 4.5e-4
    points.append({"lr": 1.35e-3, "seed": 42, "each": each(0.1, 0.2)})
    assert not settled(points, [42, 43], grid, "worst", 2)
    points.append({"lr": 4.5e-4, "seed": 43, "each": each(0.3, 0.4)})
    assert settled(points, [42, 43], grid, "worst", 2)
    assert not settled(points, [42, 43, 44], grid, "worst", 2)      # a third seed's repeat is missing
    assert not settled(points, [42, 43], grid, "all", 2)             # every rate on every seed


def test_a_sweep_takes_several_learning_rates_and_refuses_a_non_positive_one():
    rates = Sweep("relearn_lr", "x0.3,x1,x3", "learning rates")
    assert rates.check("x0.3, 1e-4", "relearn") == ["x0.3", 1e-4]
    assert swept_values(rates.check(rates.default, "relearn"), 1e-4) == pytest.approx([3e-5, 1e-4, 3e-4])
    for bad in ("0", "x1,-1e-4", "x0", "fast", ","):
        with pytest.raises(UnlearnError, match="relearn's relearn_lr"):
            rates.check(bad, "relearn")


def test_groups_come_from_tofu_authors_or_a_group_field(tmp_path):
    assert forget_groups("tofu:forget01", 40) == ["author 198"] * 20 + ["author 199"] * 20
    grouped = tmp_path / "grouped.jsonl"
    grouped.write_text("".join(json.dumps({"question": f"q{i}?", "answer": f"a{i}.", "group": f"g{i % 3}"}) + "\n"
                               for i in range(6)))
    assert forget_groups(str(grouped), 6) == ["g0", "g1", "g2", "g0", "g1", "g2"]
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"question": "q?", "answer": "a."}) + "\n")
    assert forget_groups(str(plain), 1) is None
    # rows copied out of TOFU without a group field (the demo's data, a benchmark's extracted split): their authors
    demo = Path(__file__).resolve().parents[1] / "assets" / "demo" / "forget.jsonl"
    demo_rows = demo.read_text().splitlines()
    assert forget_groups(str(demo), len(demo_rows)) == ["author 198"] * 20 + ["author 199"] * 20
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join(demo_rows[:3] + [json.dumps({"question": "q?", "answer": "a."})]) + "\n")
    assert forget_groups(str(mixed), 4) is None      # one row not from TOFU: no groups for any
    examples, groups = spread_over_groups(list(range(40)), ["a"] * 20 + ["b"] * 20, 6)   # 3 of each, in order
    assert examples == [0, 1, 2, 20, 21, 22] and groups == ["a"] * 3 + ["b"] * 3
    [(relearned, measured)] = relearn_splits(list(range(6)), ["a", "b", "c"] * 2, 0.5, seeds=[0])
    assert not {i % 3 for i in relearned} & {i % 3 for i in measured} and sorted(relearned + measured) == list(range(6))


def test_repeats_hold_out_different_facts():
    # Two TOFU authors allow two group splits, and seeds 42 and 43 draw the same author by themselves: the
    # second repeat must relearn the other author, or the seeds' spread would be the training's alone.
    assert split(["a", "b"], 0.5, 42) == split(["a", "b"], 0.5, 43)
    by_author = relearn_splits(list(range(4)), ["a", "a", "b", "b"], 0.5, seeds=[42, 43])
    assert by_author == [([0, 1], [2, 3]), ([2, 3], [0, 1])]
    by_example = relearn_splits(list("pqrs"), None, 0.5, seeds=[42, 43, 44, 45, 46, 47])   # all C(4, 2) = 6
    assert len({frozenset(relearned) for relearned, _ in by_example}) == 6
    assert all(sorted(r + m) == list("pqrs") for r, m in by_example)
    assert by_example[0] == split(list("pqrs"), 0.5, 42)     # a first draw is kept: earlier audits still hold


def _relearn(report: dict) -> dict:
    return next(r for r in report["results"] if r["name"] == "relearn")


def test_the_control_against_itself_has_residual_0_and_every_point_is_shown(lora_run, tmp_path):
    out = tmp_path / "audit"
    report = run_audit(lora_run.out, out, ["relearn"], log=lambda m: None, control=lora_run.out, seeds=2,
                       seeds_at="all", **{**FAST, "max_samples": 6, "options": {"relearn_steps": 1, "relearn_lr": "x1,x3"}})
    relearn = _relearn(report)
    assert report["control"] == lora_run.out and report["seeds"] == 2 and relearn["judged_by"] == "residual"
    assert len(relearn["points"]) == 4 and [e["lr"] for e in relearn["sweep"]] == pytest.approx([5e-2, 0.15])
    assert all(e["seeds"] == [42, 43] for e in relearn["sweep"])
    # trained alike from the same weights, the control is the unlearned model: residual 0 wherever defined
    defined = [v for e in relearn["sweep"] for v in e["residual"].values() if v is not None]
    assert defined and all(v == pytest.approx(0.0, abs=1e-9) for v in defined)
    assert relearn["residual"]["nll"] is not None and relearn["residual_interval"]["nll"] is not None
    weakest = {e["lr"]: e["verdict"] for e in relearn["sweep"]}[relearn["lr"]]
    assert relearn["verdict"] == weakest
    text = (out / "audit.md").read_text()
    assert "residual** against the never-learned control" in text and "## Every learning rate" in text
    low, high = relearn["recovery_interval"]["nll"]
    assert f"{relearn['recovery']['nll']:.4f} [{low:.2f}, {high:.2f}]" in text
    saved = json.loads((out / "audit.json").read_text())
    assert _relearn(saved)["residual_interval"] == relearn["residual_interval"]
    assert not (out / ".partial").exists() and not (out / ".work").exists()


def test_the_original_against_a_control_has_residual_1(lora_run, tmp_path, tokenizer):
    still = replace(lora_run, out=str(tmp_path / "still"), lr=1e-12, max_steps=1)   # the original, unchanged
    train(still, **quiet())
    control = tmp_path / "control"
    build_tiny_model(tokenizer, seed=1).save_pretrained(control)      # another model, the same tokenizer
    tokenizer.save_pretrained(control)
    report = run_audit(still.out, tmp_path / "audit", ["relearn"], log=lambda m: None, control=str(control),
                       **{**FAST, "options": {"relearn_steps": 1, "relearn_lr": "1e-12"}})
    relearn = _relearn(report)
    assert relearn["residual"]["nll"] == pytest.approx(1.0, abs=1e-3)   # an attack that moves nothing: the original stays
    # it forgot nothing, so there is no forgetting to undo: the verdict is the one without a control, not "shallow"
    assert relearn["verdict"].startswith("undefined") and report["overall"] == "undefined"


def test_a_stopped_audit_resumes_without_redoing_finished_attacks(lora_run, tmp_path, monkeypatch):
    from audit.attacks import finetune
    from audit.attacks.rephrase import Rephrase

    out = tmp_path / "audit"

    def stop(self, context):
        raise KeyboardInterrupt
    monkeypatch.setattr(Rephrase, "run", stop)
    with pytest.raises(KeyboardInterrupt):
        run_audit(lora_run.out, out, ["relearn", "rephrase"], log=lambda m: None, **ONE_ATTACK)
    assert (out / ".partial" / "attack-relearn.json").is_file() and not (out / "audit.json").exists()
    assert json.loads((out / "status.json").read_text())["state"] == "stopped"
    monkeypatch.undo()
    monkeypatch.setattr(finetune, "finetuned", lambda *a, **k: pytest.fail("a finished attack was trained again"))
    said = []
    report = run_audit(lora_run.out, out, ["relearn", "rephrase"], log=said.append, **ONE_ATTACK)
    assert "audit: attack-relearn kept from the stopped audit" in said
    assert [r["name"] for r in report["results"]][:2] == ["relearn", "rephrase: plain"]
    assert not (out / ".partial").exists()


def test_points_kept_from_before_the_retain_answers_were_dropped_mix_with_new_ones():
    from audit import judged

    def point(seed, retain):
        figures = {"nll": 1.0 + seed, "prob": 0.5}
        stages = {"original": 0.1, "unlearned": 2.0, "attacked": 1.0}
        each = {s: {"nll": [v, v], "tokens": [1, 1], "prob": [0.5, 0.5], "rougeL": [0.5, 0.5]}
                for s, v in stages.items()}
        forget = {s: {"nll": v, "prob": 0.5, "rougeL": 0.5} for s, v in stages.items()}
        return {"lr": 1e-4, "seed": seed, "forget": forget, "each": each,
                "retain": {"unlearned": {**figures, "rougeL": 0.5}, "attacked": retain}}
    old, new = point(1, {"nll": 2.5, "prob": 0.4, "rougeL": 0.3}), point(2, {"nll": 3.5, "prob": 0.2})
    judgement = judged({"name": "relearn", "points": [old, new]})
    assert judgement["retain"]["attacked"] == {"nll": 3.0, "prob": pytest.approx(0.3)}
    assert judgement["retain_change"] == {"nll": pytest.approx(0.5), "prob": pytest.approx(-0.2)}


def test_seeds_at_worst_repeats_only_the_attacker_s_best_learning_rate(lora_run, tmp_path, monkeypatch):
    from audit.attacks import finetune

    trained = []
    real = finetune.finetuned
    monkeypatch.setattr(finetune, "finetuned", lambda context, start, examples, steps, lr, seed, name:
                        trained.append((lr, seed)) or real(context, start, examples, steps, lr, seed, name))
    ticks = []
    report = run_audit(lora_run.out, tmp_path / "audit", ["relearn"], log=lambda m: None, seeds=3, seeds_at="worst",
                       progress=lambda done, total: ticks.append(total),
                       **{**FAST, "max_samples": 6, "options": {"relearn_steps": 1, "relearn_lr": "x0.3,x1,x3",
                                                                "relearn_lr_extend": 0}})
    relearn = _relearn(report)
    first = [(lr, seed) for lr, seed in trained if seed == 42]
    assert len(first) == 3 and len(trained) == 5 and ticks[-1] == 5      # 3 learning rates, then 2 repeats
    # the repeats ran where the first seed's attack did best, which is the learning rate the verdict takes
    screened = recovery.judge_points([p for p in relearn["points"] if p["seed"] == 42])["lr"]
    assert {lr for lr, seed in trained if seed != 42} == {screened} and relearn["lr"] == screened
    assert {e["lr"]: e["seeds"] for e in relearn["sweep"]}[screened] == [42, 43, 44]
    assert report["seeds_at"] == "worst"
    assert "other seeds only at the worst one" in (tmp_path / "audit" / "audit.md").read_text()
    with pytest.raises(UnlearnError, match="--seeds-at"):
        run_audit(lora_run.out, tmp_path / "bad", ["relearn"], log=lambda m: None, seeds_at="best", **ONE_ATTACK)


def _residual_sweep(monkeypatch, residual_at, seeds=2, seeds_at="worst", reach=2, rates=(1e-5, 3e-5, 9e-5)):
    """finetune.sweep over made-up points whose NLL residual is residual_at(lr): (points, rates tried in
    order, units the sweep added to the progress bar)."""
    from audit.attacks import finetune
    from audit.attacks.base import AuditContext

    tried, grown = [], []

    def point(context, attack, seed, lr, *rest):
        tried.append((lr, seed))
        value = residual_at(lr)   # control attacked 1, original 0: residual = 1 - attacked
        stages = {"original": [0.0], "unlearned": [2.0], "control": [1.0], "control_attacked": [1.0],
                  "attacked": [1.0 - value]}
        return {"lr": lr, "seed": seed, "each": {stage: {"nll": v, "tokens": [1]} for stage, v in stages.items()}}
    monkeypatch.setattr(finetune, "_point", point)
    context = AuditContext(run=Path("."), config={"lr": 3e-5}, work=Path("."), forget=[], retain=None, measure=None,
                           baseline=None, log=lambda m: None, seeds=seeds, seeds_at=seeds_at, control="c",
                           options={"relearn_lr": list(rates), "relearn_lr_extend": reach})
    context.kept, context.grow = (lambda key, compute: compute()), grown.append
    plans = [(42 + n, [], "held out", []) for n in range(seeds)]
    return finetune.sweep(context, "relearn", plans, 1, None), tried, grown


def test_a_sweep_whose_worst_case_is_at_its_top_reaches_further_up(monkeypatch):
    # the residual grows with the rate up to 8.1e-4, then falls: the grid 1e-5..9e-5 (ratio 3) reaches 2.7e-4,
    # then 8.1e-4, and stops at its reach of 2 (8.1e-4 still the worst, so the report says it is at the edge)
    points, tried, grown = _residual_sweep(monkeypatch, lambda lr: min(lr, 8.1e-4) * 1000, reach=2)
    assert tried == [(1e-5, 42), (3e-5, 42), (9e-5, 42), (2.7e-4, 42), (8.1e-4, 42), (8.1e-4, 43)]
    assert grown == [2, 2]        # one point each, for the unlearned model and the control
    judged = recovery.judge_points(points)
    assert judged["lr"] == 8.1e-4 and judged["at_edge"] == "highest"
    assert [e["lr"] for e in judged["sweep"]] == [1e-5, 3e-5, 9e-5, 2.7e-4, 8.1e-4]
    # a peak inside the reach: 2.7e-4 tried, then 8.1e-4 does worse, so the repeats run at 2.7e-4
    points, tried, _ = _residual_sweep(monkeypatch, lambda lr: 0.9 - abs(lr - 2.7e-4) * 1000, reach=3)
    assert [lr for lr, _ in tried] == [1e-5, 3e-5, 9e-5, 2.7e-4, 8.1e-4, 2.7e-4]
    assert recovery.judge_points(points)["at_edge"] is None


def test_a_sweep_reaches_down_as_well_and_not_at_all_when_told_or_when_the_best_is_inside(monkeypatch):
    _, tried, _ = _residual_sweep(monkeypatch, lambda lr: 1 - lr * 1000, reach=1, seeds=1)
    assert [lr for lr, _ in tried] == [1e-5, 3e-5, 9e-5, 3.33e-6]   # 1e-5 / (3e-5 / 1e-5), to 3 digits
    _, tried, grown = _residual_sweep(monkeypatch, lambda lr: lr * 1000, reach=0)
    assert [lr for lr, _ in tried] == [1e-5, 3e-5, 9e-5, 9e-5] and grown == []
    _, tried, _ = _residual_sweep(monkeypatch, lambda lr: 0.5 - abs(lr - 3e-5) * 1000)
    assert [lr for lr, _ in tried] == [1e-5, 3e-5, 9e-5, 3e-5]
    # every rate alike (the control against itself): no end is the attacker's best, nothing is added
    _, tried, _ = _residual_sweep(monkeypatch, lambda lr: 0.0)
    assert len(tried) == 4
    # --seeds-at all: the reach is tried with every seed
    _, tried, grown = _residual_sweep(monkeypatch, lambda lr: min(lr, 2.7e-4) * 1000, seeds_at="all")
    assert tried[-4:] == [(2.7e-4, 42), (2.7e-4, 43), (8.1e-4, 42), (8.1e-4, 43)] and grown == [4, 4]


def test_an_update_widening_the_sweep_trains_only_the_new_points(lora_run, tmp_path, monkeypatch):
    from audit.attacks import finetune

    out = tmp_path / "audit"
    options = {"relearn_steps": 1, "relearn_lr": "x1,x3", "relearn_lr_extend": 0}
    first = run_audit(lora_run.out, out, ["relearn"], log=lambda m: None, **{**ONE_ATTACK, "options": options})
    trained = []
    real = finetune.finetuned
    monkeypatch.setattr(finetune, "finetuned", lambda context, start, examples, steps, lr, seed, name:
                        trained.append(lr) or real(context, start, examples, steps, lr, seed, name))
    wider = run_audit(lora_run.out, out, ["relearn"], log=lambda m: None, update=True,
                      **{**ONE_ATTACK, "options": {**options, "relearn_lr": "x1,x3,x9"}})
    assert trained == [pytest.approx(9 * lora_run.lr)]
    assert _relearn(wider)["points"][:2] == _relearn(first)["points"]
    assert [p["lr"] for p in _relearn(wider)["points"]] == pytest.approx([lora_run.lr * k for k in (1, 3, 9)])
    # another budget is another attack: nothing is taken from the earlier one
    trained[:] = []
    run_audit(lora_run.out, out, ["relearn"], log=lambda m: None, update=True,
              **{**ONE_ATTACK, "options": {**options, "relearn_steps": 2}})
    assert len(trained) == 2


def test_a_control_cache_fine_tunes_the_control_once_across_audits(lora_run, tmp_path, tokenizer, monkeypatch):
    from audit.attacks import finetune

    control = tmp_path / "control"
    build_tiny_model(tokenizer, seed=1).save_pretrained(control)
    tokenizer.save_pretrained(control)
    cache = tmp_path / "cache"
    trained = []
    real = finetune.finetuned
    monkeypatch.setattr(finetune, "finetuned", lambda context, start, *a, **k: trained.append(start) or
                        real(context, start, *a, **k))
    options = {**ONE_ATTACK, "options": {"relearn_steps": 1, "relearn_lr": "x1,x3", "relearn_lr_extend": 0}}
    first = run_audit(lora_run.out, tmp_path / "first", ["relearn"], log=lambda m: None, control=str(control),
                      control_cache=cache, **options)
    assert len(trained) == 4 and len(list(cache.glob("control-*.json"))) == 2     # 2 lrs x (unlearned, control)
    said, trained[:] = [], []
    again = run_audit(lora_run.out, tmp_path / "again", ["relearn"], log=said.append, control=str(control),
                      control_cache=cache, **options)
    assert trained == [str(tmp_path / "again" / ".work" / "starts" / "unlearned")] * 2   # the control: not again
    assert sum("the control's relearn fine-tuning" in m and "taken from" in m for m in said) == 2
    assert [p["forget"]["control_attacked"] for p in _relearn(again)["points"]] == \
        [p["forget"]["control_attacked"] for p in _relearn(first)["points"]]
    # other control weights (one byte is enough to change the digest) are another key: trained again
    weights = next(control.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + bytes([weights.read_bytes()[-1] ^ 1]))
    trained[:] = []
    run_audit(lora_run.out, tmp_path / "changed", ["relearn"], log=lambda m: None, control=str(control),
              control_cache=cache, **options)
    assert len(trained) == 4 and len(list(cache.glob("control-*.json"))) == 4


def test_bad_control_and_sweep_input_gets_one_clear_error(lora_run, tmp_path, tiny_model_dir, capsys):
    from conftest import sentencepiece_model_dir

    def refused(*flags) -> str:
        assert main(["audit", lora_run.out, "--out", str(tmp_path / "never"), "--attacks", "relearn", *flags]) == 2
        return capsys.readouterr().err

    other = sentencepiece_model_dir(tmp_path / "other")
    build_tiny_model(__import__("core.models").models.load_tokenizer(str(other))).save_pretrained(other)
    err = refused("--control", str(other))
    assert "error: the control" in err and "tokenizer differs from the run's" in err and "fix:" in err
    err = refused("--control", str(tiny_model_dir))
    assert "is the model this run unlearned from" in err and "fix: name a model that never saw" in err
    err = refused("--relearn-lr", "x1,0")
    assert "error: relearn's relearn_lr must be comma-separated, each > 0" in err and "fix:" in err
    err = refused("--relearn-split", "group")
    assert "names no groups, so it cannot be split by group" in err and "fix: use --relearn-split example" in err
    err = refused("--max-samples", "2", "--seeds", "3")
    assert "--seeds 3: the forget set's 2 examples allow only 2 different relearn splits" in err
    assert "fix: use --seeds 2 or fewer" in err
    assert not (tmp_path / "never").exists()      # refused before anything was written


def test_the_group_split_relearns_some_groups_and_measures_the_others(lora_run, tmp_path):
    grouped = tmp_path / "grouped.jsonl"
    grouped.write_text("".join(json.dumps({"question": f"Who wrote book {i}?", "answer": f"Author {i % 4} did.",
                                           "group": f"author {i % 4}"}) + "\n" for i in range(8)))
    run = replace(lora_run, out=str(tmp_path / "run"), forget=str(grouped), max_steps=1)
    train(run, **quiet())
    options = {"relearn_steps": 1, "relearn_lr": "x1", "relearn_split": "group"}
    report = run_audit(run.out, tmp_path / "audit", ["relearn"], log=lambda m: None, **{**FAST, "options": options})
    relearn = _relearn(report)
    assert relearn["split"] == "group" and relearn["trained_on"] == 4 and relearn["points"][0]["measured"] == 4
    assert "relearn: group split" in (tmp_path / "audit" / "audit.md").read_text()
    # 4 groups, half relearned: 6 different splits; a larger --max-samples would not add a group
    with pytest.raises(UnlearnError, match="4 groups allow only 6 different relearn splits") as refused:
        run_audit(run.out, tmp_path / "never", ["relearn"], log=lambda m: None, seeds=7,
                  **{**FAST, "options": options})
    assert refused.value.fix == "use --seeds 6 or fewer, or forget data of more groups"
    assert not (tmp_path / "never").exists()


def test_the_command_line_passes_the_control_and_the_seeds(monkeypatch):
    import audit

    calls = []
    monkeypatch.setattr(audit, "run_audit", lambda *args, **kwargs: calls.append(kwargs) or {})
    monkeypatch.setattr(audit, "markdown", lambda report: "")
    assert main(["audit", "r", "--out", "o", "--control", "bundled", "--seeds", "3", "--relearn-lr", "1e-4,x3"]) == 0
    assert calls[0]["control"] == "bundled" and calls[0]["seeds"] == 3 and calls[0]["control_cache"] is None
    assert calls[0]["seeds_at"] == "worst"      # the default: the repeats at the attacker's best
    assert main(["audit", "r", "--out", "o", "--control", "bundled", "--control-cache", "cache"]) == 0
    assert calls[1]["control_cache"] == str(Path("cache").resolve())


def test_the_studio_sets_the_unlearned_model_against_the_control_in_plain_words():
    from audit import rejudged
    from studio.tabs.audit import verdict_table

    each = {"original": {"nll": [1.0, 1.0], "tokens": [1, 1]}, "unlearned": {"nll": [3.0, 3.0], "tokens": [1, 1]},
            "attacked": {"nll": [2.9, 3.0], "tokens": [1, 1]}, "control_attacked": {"nll": [3.0, 3.0], "tokens": [1, 1]}}
    figures = {stage: {"nll": sum(v["nll"]) / 2} for stage, v in each.items()}
    point = {"lr": 1e-4, "seed": 42, "steps": 1, "forget": figures, "each": each}
    report = rejudged({"results": [{"name": "relearn", "points": [point]}], "control": "bundled"})
    row = verdict_table(report).iloc[0]
    # residual (3.0 - 2.95) / (3.0 - 1.0) = 0.025; its interval over the two examples [0, 0.05]
    assert row["NLL residual [95 % interval]"] == "0.0250 [0.00, 0.05]" and row["control, attacked"] == 3.0
    assert row["verdict"] == "robust" and "no more than a model that never learned" in row["in plain words"]
    assert "stronger one may exist" not in row["in plain words"]    # one learning rate: no end to reach past
    second = {**point, "lr": 1e-5, "each": {**each, "attacked": {"nll": [3.0, 3.0], "tokens": [1, 1]}}}
    swept = rejudged({"results": [{"name": "relearn", "points": [second, point]}], "control": "bundled"})
    assert "the highest learning rate tried, so a stronger one may exist" in verdict_table(swept).iloc[0]["in plain words"]
    # residuals 0.1 and 0.4 over two examples: [0.1, 0.4] spans 0.25 only, so it is at most partly undone
    noisy = {**each, "attacked": {"nll": [2.8, 2.2], "tokens": [1, 1]}}
    words = verdict_table(rejudged({"results": [{"name": "relearn", "points": [{**point, "each": noisy}]}],
                                    "control": "bundled"})).iloc[0]["in plain words"]
    assert words.startswith("not sure") and "at most partly undone" in words
    table = verdict_table(rejudged({"results": [{"name": "relearn", "points": [{**point, "each": noisy}]}],
                                    "control": "bundled"}))
    assert table.iloc[0]["verdict"] == "inconclusive (spans 0.25)"


def test_the_share_forgotten_before_any_attack_by_hand():
    # NLL 0.0 original, 2.0 for the never-learned control, 0.5 for the unlearned model: a quarter of the way
    assert recovery.forgotten(0.0, 0.5, 2.0, "nll") == pytest.approx(0.25)
    assert recovery.forgotten(0.9, 0.6, 0.3, "prob") == pytest.approx(0.5)   # higher = more known
    assert recovery.forgotten(0.0, 0.0, 2.0, "nll") == 0.0 and recovery.forgotten(0.9, 0.3, 0.3, "rougeL") == 1.0
    assert recovery.forgotten(2.0, 3.0, 2.03, "nll") is None   # the control knows as much as the original


def _nll(*values) -> dict:
    return {"nll": list(values), "tokens": [1] * len(values)}


@pytest.mark.parametrize("unlearned, barely", [((1.1, 1.3), True), ((2.9, 3.1), False)])
def test_a_model_that_barely_forgot_is_told_apart_from_one_whose_forgetting_came_back(unlearned, barely):
    from audit import rejudged
    from audit.report import markdown
    from studio.tabs.audit import verdict_table

    each = {"original": _nll(1.0, 1.0), "unlearned": _nll(*unlearned), "control": _nll(3.0, 3.2),
            "attacked": _nll(1.0, 1.1), "control_attacked": _nll(2.9, 3.1)}
    figures = {stage: {"nll": sum(v["nll"]) / 2} for stage, v in each.items()}
    point = {"lr": 1e-4, "seed": 42, "steps": 1, "forget": figures, "each": each}
    report = rejudged({"results": [{"name": "relearn", "points": [point]}], "control": "bundled", "run": "r",
                       "method": "npo", "wall_seconds": 1.0})
    result = report["results"][0]
    # (1.2 - 1.0) / (3.1 - 1.0) = 0.095 when barely forgotten; (3.0 - 1.0) / 2.1 = 0.95 when well forgotten
    assert result["forgotten"]["nll"] == pytest.approx(0.2 / 2.1 if barely else 2.0 / 2.1)
    assert result["verdict"] == "shallow"   # either way the attacked model is near the original
    words = verdict_table(report).iloc[0]["in plain words"]
    assert ("Barely forgotten" in markdown(report)) == barely
    assert words.startswith("barely forgotten to begin with") == barely
    assert ("more than halfway back" in words) != barely


def test_with_repeats_at_the_worst_rate_the_verdict_is_taken_there_not_at_a_one_seed_rate():
    # seed 42 at three rates, seeds 43 and 44 at 5e-5 (the first seed's worst): 1.5e-4 reads higher on its one
    # seed (0.6) than 5e-5 over three (0.5, 0.4, 0.3), but the verdict and its interval are 5e-5's, over 3 seeds
    each = lambda attacked: {"original": _each([0.0]), "attacked": _each([attacked]),   # noqa: E731
                             "control_attacked": _each([1.0]), "unlearned": _each([1.0])}
    points = [{"lr": lr, "seed": seed, "each": each(1 - value)} for lr, seed, value in
              ((1.5e-5, 42, 0.2), (5e-5, 42, 0.5), (1.5e-4, 42, 0.6), (5e-5, 43, 0.4), (5e-5, 44, 0.3))]
    judged = recovery.judge_points(points)
    assert judged["lr"] == 5e-5 and judged["residual"]["rougeL"] == pytest.approx(0.4)
    assert {e["lr"]: e["seeds"] for e in judged["sweep"]}[5e-5] == [42, 43, 44]
    # every rate on every seed (--seeds-at all): the worst of all
    points += [{"lr": lr, "seed": seed, "each": each(1 - 0.6)} for lr in (1.5e-5, 1.5e-4) for seed in (43, 44)]
    assert recovery.judge_points(points)["lr"] == 1.5e-4


def test_a_report_written_under_an_older_rule_reads_as_today_s_rules_judge_it(tmp_path):
    """The studio and the export read audit.json through read_report: the NPO+RT-by-author case, written as the
    old order judged it (1.5e-4, inconclusive), reads as 4.5e-4, partial; a rewritten file is read again."""
    import json

    from audit import read_report, rejudged

    each = lambda low, high: {"original": _each([1.0, 1.0]), "attacked": _each([low, high]),   # noqa: E731
                              "control_attacked": _each([0.0, 0.0]), "unlearned": _each([0.0, 0.0])}
    points = [{"lr": lr, "seed": 42, "each": each(*values)} for lr, values in ((1.5e-4, (0.09, 0.37)),
                                                                              (4.5e-4, (0.26, 0.40)))]
    for point in points:   # a point's mean figures, as the audit keeps them beside the per-example ones
        point["forget"] = {stage: {"rougeL": sum(v["rougeL"]) / 2} for stage, v in point["each"].items()}
    report = rejudged({"results": [{"name": "relearn", "points": points}], "control": "bundled"})
    as_written = json.loads(json.dumps(report))
    as_written["results"][0].update(lr=1.5e-4, verdict="inconclusive: a 95 % interval spans 0.25 or 0.5")
    as_written["overall"] = "inconclusive"
    path = tmp_path / "audit.json"
    path.write_text(json.dumps(as_written))
    found = read_report(path)
    assert found["results"][0]["lr"] == 4.5e-4 and found["results"][0]["verdict"] == "partial"
    assert found["overall"] == "partial"
    found["overall"] = "changed by a caller"          # a copy: the next read is not affected
    assert read_report(path)["overall"] == "partial"
    path.write_text(json.dumps({**as_written, "results": []}))
    assert read_report(path)["results"] == [] and read_report(tmp_path / "none.json") is None


def test_a_second_stage_run_is_audited_against_the_model_that_knew_the_data(tmp_path):
    """A run whose base is another unlearning run's final model (UNDO starts from an unlearned model) is measured
    against that run's base: against its own, nothing was forgotten and every recovery is undefined. The chain
    stops at a learning run's model (a target that learned the data by sft), and at a model that is no run's."""
    from audit import before_unlearning
    from core.runs import RunDir

    def run(name, method, model):
        folder = tmp_path / name
        RunDir(folder).write_config({"method": method, "model": str(model)})
        RunDir(folder).model_dir.mkdir(parents=True)
        (RunDir(folder).model_dir / "config.json").write_text('{"model_type": "llama"}')   # a model folder
        return RunDir(folder).model_dir

    target = run("target", "sft", "bundled")           # learned the data
    unlearned = run("npo_rt", "npo_rt", target)         # forgot it
    second = run("undo", "undo", unlearned)             # the second stage's own model
    assert Path(before_unlearning(str(unlearned))).resolve() == target.resolve()
    assert Path(before_unlearning(str(second))).resolve() == target.resolve()
    assert before_unlearning(str(target)) == str(target)
    assert before_unlearning("bundled") == "bundled" and before_unlearning(str(tmp_path)) == str(tmp_path)
