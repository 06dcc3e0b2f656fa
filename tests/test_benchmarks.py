"""The benchmark scripts' own bookkeeping (their measurements live in docs/, not in tests)."""
from __future__ import annotations

import pytest

from benchmarks.tofu_stages import _prune_checkpoints, _require_weights, _weights_worth_keeping
from core.checkpoint import METHOD_TENSORS, OPTIMIZER, STATE, WEIGHTS, extra_weights_file


def _run_with_checkpoints(root, steps):
    for step in steps:
        checkpoint = root / "checkpoints" / f"step-{step:06d}"
        checkpoint.mkdir(parents=True)
        for name in (WEIGHTS, OPTIMIZER, STATE, METHOD_TENSORS, extra_weights_file("adversary")):
            (checkpoint / name).write_text("x")
    (root / "model").mkdir()
    (root / "model" / "model.safetensors").write_text("x")
    return root


def test_evaluated_run_keeps_only_the_best_epochs_weights_and_the_final_model(tmp_path):
    run = _run_with_checkpoints(tmp_path / "run", (10, 20, 30))
    points = [{"epoch": e, "mu": mu, "fq": fq} for e, mu, fq in ((0, 1.0, 1e-9), (1, 0.95, 0.1), (2, 0.95, 0.9),
                                                                  (3, 0.5, 0.99))]
    _prune_checkpoints(run, keep_weights=_weights_worth_keeping(points, steps_per_epoch=10, keep_all=False))
    kept = sorted(p.relative_to(run).as_posix() for p in run.rglob("*.safetensors"))
    # the method's extra copies (the adversary) only served resuming; its tensor state stays with the weights
    assert kept == ["checkpoints/step-000020/method-state.safetensors",
                    "checkpoints/step-000020/trainable.safetensors", "model/model.safetensors"]
    assert all((run / "checkpoints" / f"step-{s:06d}" / STATE).is_file() for s in (10, 20, 30))


def test_finished_learn_run_drops_every_checkpoints_weights(tmp_path):
    run = _run_with_checkpoints(tmp_path / "run", (50, 100))
    _prune_checkpoints(run, keep_weights=lambda step: False)
    assert [p.name for p in run.rglob("*.safetensors")] == ["model.safetensors"]


def test_a_dropped_checkpoint_cannot_be_evaluated_again_and_says_how_to_redo_it(tmp_path):
    run = _run_with_checkpoints(tmp_path / "run", (10, 20))
    _prune_checkpoints(run, keep_weights=lambda step: step == 20)
    _require_weights(run / "checkpoints" / "step-000020")
    _require_weights(run / "model")
    with pytest.raises(SystemExit, match="--keep-checkpoints") as stopped:
        _require_weights(run / "checkpoints" / "step-000010")
    assert str(run) in str(stopped.value)


def test_keep_checkpoints_keeps_every_epochs_weights_but_not_the_optimizer_states(tmp_path):
    run = _run_with_checkpoints(tmp_path / "run", (10, 20))
    points = [{"epoch": 0, "mu": 1.0, "fq": 0.1}, {"epoch": 1, "mu": 1.0, "fq": 0.5}, {"epoch": 2, "mu": 1.0, "fq": 0.2}]
    _prune_checkpoints(run, keep_weights=_weights_worth_keeping(points, steps_per_epoch=10, keep_all=True))
    kept = sorted(p.relative_to(run).as_posix() for p in run.rglob("*.safetensors"))
    assert kept == ["checkpoints/step-000010/method-state.safetensors", "checkpoints/step-000010/trainable.safetensors",
                    "checkpoints/step-000020/method-state.safetensors", "checkpoints/step-000020/trainable.safetensors",
                    "model/model.safetensors"]


def _point(epoch, fq, mu):
    return {"epoch": epoch, "fq": fq, "mu": mu}


def _forget50_results(npo_rt_points, at_second_rate=()):
    start = _point(0, 1e-3, 0.35)
    small = {"plan": {"name": "forget50-10pct", "eval_sizes": {"eval_log_forget.json": 40}, "unlearn_lr": 5e-5},
             "target": {"mu": 0.35},
             "curves": {"ga": [start, _point(1, 0.05, 0.35), _point(2, 0.1, 0.30), _point(3, 1e-4, 0.05)]}}

    def half(name, lr, points, learned_in=None):
        return {"plan": {"name": name, "eval_sizes": {"eval_log_forget.json": 100}, "unlearn_lr": lr,
                         "learned_in": learned_in}, "target": {"mu": 0.35}, "retain": {"mu": 0.36},
                "curves": {"npo_rt": [start, *points]}}
    second = [half("forget50-50pct-lr1e-4", 1e-4, at_second_rate, "forget50-50pct")] if at_second_rate else []
    return [small, half("forget50-50pct", 5e-5, npo_rt_points), *second]


@pytest.mark.parametrize("npo_rt, verdict, versus_final", [
    # utility floor 0.8 x 0.35 = 0.28; GA's best FQ at 10 % is 0.1 (epoch 2), its last 1e-4 (epoch 3)
    ([_point(1, 1e-3, 0.30), _point(2, 0.2, 0.25)], "no", "above"),     # FQ 0.2 only below the floor
    ([_point(1, 0.2, 0.30)], "yes", "above"),
    ([_point(1, 1e-5, 0.30)], "no", "not above"),
])
def test_the_forget50_headline_is_decided_by_its_stated_rule(npo_rt, verdict, versus_final):
    from benchmarks.tofu_claims import headline_claims

    headline, against_final, matched, ga = headline_claims(_forget50_results(npo_rt))
    assert "not known yet" in matched   # hand-made points without truth ratios
    assert f"above GA's best at 10 % (0.1) at some epoch: **{verdict}**" in headline
    assert f"**{versus_final}**" in against_final and "over 100 forget answers at 50 % and 40 at 10 %" in against_final
    # GA ends at MU 0.05 < 0.5 x 0.35: it fails at 10 %; epochs 1 and 2 were above both bounds
    assert "GA already fails at 10 %" in ga and "**yes**" in ga and "[1, 2]" in ga


def test_the_forget50_headline_counts_every_learning_rate_tried_at_50_percent():
    from benchmarks.tofu_claims import headline_claims

    headline = headline_claims(_forget50_results([_point(1, 1e-3, 0.30)], at_second_rate=[_point(1, 0.3, 0.29)]))[0]
    assert "**yes**; lr 0.0001, epoch 1: FQ 0.3, MU 0.290" in headline and "learning rates tried: 0.0001, 5e-05" in headline


def test_the_forget50_figure_draws_a_second_learning_rate_in_its_forget_sizes_panels(tmp_path):
    from benchmarks.tofu_report import panel_rows, plot

    results = _forget50_results([_point(1, 1e-3, 0.30)], at_second_rate=[_point(1, 0.3, 0.29)])
    rows = panel_rows(results, one_row_per_size=True)
    assert [r["plan"]["name"] for r, _ in rows] == ["forget50-10pct", "forget50-50pct"]   # a row per forget size
    assert [(label, style) for _, label, style, _ in rows[0][1]] == [("GA", "-")]
    assert [(label, style, points[-1]["fq"]) for _, label, style, points in rows[1][1]] == [
        ("NPO+RT (lr 5e-05)", "-", 1e-3), ("NPO+RT (lr 0.0001)", "--", 0.3)]
    # the mini report keeps a row per plan: its learning rates are its two figures
    assert len(panel_rows(results, one_row_per_size=False)) == 3
    for key in ("target", "retain"):
        for r in results:
            r.setdefault(key, {"mu": 0.35})
    plot(results, tmp_path / "figure.png", one_row_per_size=True)
    from PIL import Image

    assert Image.open(tmp_path / "figure.png").size == (1440, 864)   # 12 x 7.2 inches at 120 dpi: two rows


def test_every_registered_method_has_a_style_of_its_own_and_any_other_name_gets_a_steady_one(tmp_path):
    from benchmarks.tofu_report import MARKERS, PALETTE, method_style, plot
    from core.methods import unlearning_methods

    styles = [method_style(name) for name in unlearning_methods()]
    assert len({(style["color"], style["marker"]) for style in styles}) == len(styles) > 0
    double = method_style("_test_double")            # not in the registry: a test double, a method added later
    assert double == method_style("_test_double") and double["color"] in PALETTE and double["marker"] in MARKERS
    results = _forget50_results([_point(1, 1e-3, 0.30)])
    results[0]["curves"]["_test_double"] = [_point(0, 1e-3, 0.35), _point(1, 0.2, 0.3)]
    for r in results:
        r.setdefault("retain", {"mu": 0.36})
    plot(results, tmp_path / "figure.png", one_row_per_size=True)   # drawn, not a KeyError
    assert (tmp_path / "figure.png").stat().st_size > 0


def _exact_ks_pvalue(n: int, k: int) -> float:
    """P(D >= k/n) for two samples of n, by hand: 2 sum_j (-1)^(j+1) C(2n, n - jk) / C(2n, n) (lattice paths)."""
    from math import comb

    return 2 * sum((-1) ** (j + 1) * comb(2 * n, n - j * k) for j in range(1, n // k + 1)) / comb(2 * n, n)


def _at_distance(n: int, k: int) -> tuple[list[float], list[float]]:
    """Two samples of n whose KS distance is exactly k/n."""
    return [float(i) for i in range(n)], [i + k - 0.5 for i in range(n)]


def test_size_matched_forget_quality_takes_fewer_answers_for_the_same_distance():
    from benchmarks.tofu_claims import size_matched_fq

    model, retain = _at_distance(100, 25)
    assert size_matched_fq(model, retain, 100) == pytest.approx(_exact_ks_pvalue(100, 25), rel=1e-9)  # 0.00373
    assert size_matched_fq(model, retain, 200) == size_matched_fq(model, retain, 100)   # never more than all
    matched = size_matched_fq(model, retain, 40)
    assert matched == size_matched_fq(model, retain, 40)             # seeded: the same every time
    assert matched == pytest.approx(_exact_ks_pvalue(40, 14), rel=1e-9)   # the median draw: D = 14/40
    assert matched > _exact_ks_pvalue(100, 25)                     # the same shift, 40 answers: a larger p
    assert size_matched_fq(retain, retain, 40) == pytest.approx(1.0)


def test_the_size_matched_headline_line_says_which_rates_it_could_not_judge():
    from benchmarks.tofu_claims import headline_claims

    model, retain = _at_distance(100, 16)      # FQ 0.155 over all 100, 0.165 over 40
    results = _forget50_results([_point(1, 1e-3, 0.30)], at_second_rate=[_point(1, 0.155, 0.29)])
    results[1]["retain"]["forget_truth_ratios"] = retain
    results[2]["curves"]["npo_rt"][1]["forget_truth_ratios"] = model
    matched = headline_claims(results)[2]
    assert "over 40 of its forget answers" in matched and "best 0.165 (lr 0.0001, epoch 1; over all its answers 0.155)" in matched
    assert "**above** GA's best at 10 % (0.1;" in matched       # GA's best FQ in the fixture is 0.1
    assert "not known at lr 5e-05" in matched


def _write_eval(folder, paraphrased: list[float], perturbed: list[list[float]]) -> None:
    """An evaluation folder holding what Forget Quality reads: the forget log's losses."""
    import json

    folder.mkdir(parents=True)
    log = {"avg_paraphrased_loss": {str(i): v for i, v in enumerate(paraphrased)},
           "average_perturb_loss": {str(i): v for i, v in enumerate(perturbed)}}
    (folder / "eval_log_aggregated.json").write_text(json.dumps({"eval_log_forget.json": log}))
    (folder / "summary.json").write_text("{}")


def test_points_recorded_without_truth_ratios_get_them_from_the_cache_when_they_give_the_recorded_fq(tmp_path):
    from dataclasses import asdict

    from benchmarks.ledger import Ledger
    from benchmarks.tofu_claims import forget_quality_over
    from benchmarks.tofu_plans import forget50_plans
    from benchmarks.tofu_stages import Bench, fill_truth_ratios, forget_truth_ratios
    from core.models import weights_digest

    plan = forget50_plans()[0]
    settings, root = asdict(plan), tmp_path / "runs"
    model = root / plan.shared_target / "model"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights")
    evals = root / plan.name / "eval"
    losses = {"retain": [0.5, 1.0, 1.5, 2.0], "target": [0.1, 0.2, 0.3, 0.4], "ga-epoch1": [3.0, 2.0, 1.0, 0.9],
              "ga-epoch2": [0.9, 0.8, 0.7, 0.6]}
    for name, paraphrased in losses.items():
        _write_eval(evals / name, paraphrased, [[1.0, 1.2]] * 4)
    ledger = Ledger(tmp_path / "records")
    retain_folder = ledger.keep_retain_eval(settings, evals / "retain")
    ratios = {name: forget_truth_ratios(evals / name) for name in losses}

    def point(name, fq=None):
        return {"fq": forget_quality_over(ratios[name], ratios["retain"]) if fq is None else fq, "mu": 0.3}
    ledger.keep_models(settings, point("target"), {"fq": None, "mu": 0.3}, weights_digest(model))
    ledger.keep_curve(settings, "ga", [{"epoch": 0, **point("target")}, {"epoch": 1, **point("ga-epoch1")},
                                       {"epoch": 2, **point("ga-epoch2", fq=0.123)}], None)   # not this cache's

    assert fill_truth_ratios(Bench(root, "cpu", ledger), plan) == 4     # target, retain, epochs 0 and 1
    again = Ledger(tmp_path / "records")                                # saved in the record
    record = again.plan(settings)
    assert record["retain"]["forget_truth_ratios"] == forget_truth_ratios(retain_folder)
    assert record["target"]["forget_truth_ratios"] == ratios["target"]
    curve = record["curves"]["ga"]
    assert curve[1]["forget_truth_ratios"] == ratios["ga-epoch1"] and "forget_truth_ratios" not in curve[2]
    assert fill_truth_ratios(Bench(root, "cpu", again), plan) == 0      # nothing left to fill

    (model / "model.safetensors").write_bytes(b"learned again, other weights")
    del record["target"]["forget_truth_ratios"]
    assert fill_truth_ratios(Bench(root, "cpu", again), plan) == 0      # not the recorded target's evaluation


def test_step_cost_times_each_method_against_npo_rt_and_says_which_refused_a_mode(tiny_model_dir, tmp_path):
    import json

    from benchmarks import step_cost

    out = tmp_path / "step_cost"
    step_cost.main(["--model", str(tiny_model_dir), "--methods", "undo", "--modes", "lora,full", "--steps", "3",
                    "--rounds", "2", "--out", str(out)])
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["variants"] == ["npo_rt", "undo"]     # the reference is always timed
    for mode in ("lora", "full"):
        reference = record["modes"][mode]["npo_rt"]
        assert reference["ratio"] == 1.0 and reference["seconds"] > 0 and reference["steps"] == 4   # 2 x steps 2..3
    assert "--lora" in record["modes"]["lora"]["undo"]["refused"]
    full = record["modes"]["full"]["undo"]
    assert full["ratio"] == pytest.approx(full["seconds"] / record["modes"]["full"]["npo_rt"]["seconds"], abs=0.05)
    assert "| undo | refused | - |" in out.with_suffix(".md").read_text()
