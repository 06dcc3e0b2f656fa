"""The benchmark scripts' own bookkeeping (their measurements live in docs/, not in tests)."""
from __future__ import annotations

import pytest

from benchmarks.tofu_mini import _prune_checkpoints, _require_weights, _weights_worth_keeping
from core.checkpoint import OPTIMIZER, STATE, WEIGHTS


def _run_with_checkpoints(root, steps):
    for step in steps:
        checkpoint = root / "checkpoints" / f"step-{step:06d}"
        checkpoint.mkdir(parents=True)
        for name in (WEIGHTS, OPTIMIZER, STATE):
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
    assert kept == ["checkpoints/step-000020/trainable.safetensors", "model/model.safetensors"]
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
    assert kept == ["checkpoints/step-000010/trainable.safetensors", "checkpoints/step-000020/trainable.safetensors",
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
                         "learned_in": learned_in}, "target": {"mu": 0.35}, "curves": {"npo_rt": [start, *points]}}
    second = [half("forget50-50pct-lr1e-4", 1e-4, at_second_rate, "forget50-50pct")] if at_second_rate else []
    return [small, half("forget50-50pct", 5e-5, npo_rt_points), *second]


@pytest.mark.parametrize("npo_rt, verdict, versus_final", [
    # utility floor 0.8 x 0.35 = 0.28; GA's best FQ at 10 % is 0.1 (epoch 2), its last 1e-4 (epoch 3)
    ([_point(1, 1e-3, 0.30), _point(2, 0.2, 0.25)], "no", "above"),     # FQ 0.2 only below the floor
    ([_point(1, 0.2, 0.30)], "yes", "above"),
    ([_point(1, 1e-5, 0.30)], "no", "not above"),
])
def test_the_forget50_headline_is_decided_by_its_stated_rule(npo_rt, verdict, versus_final):
    from benchmarks.tofu_mini import headline_claims

    headline, against_final, ga = headline_claims(_forget50_results(npo_rt))
    assert f"above GA's best at 10 % (0.1) at some epoch: **{verdict}**" in headline
    assert f"**{versus_final}**" in against_final and "over 100 forget answers at 50 % and 40 at 10 %" in against_final
    # GA ends at MU 0.05 < 0.5 x 0.35: it fails at 10 %; epochs 1 and 2 were above both bounds
    assert "GA already fails at 10 %" in ga and "**yes**" in ga and "[1, 2]" in ga


def test_the_forget50_headline_counts_every_learning_rate_tried_at_50_percent():
    from benchmarks.tofu_mini import headline_claims

    headline = headline_claims(_forget50_results([_point(1, 1e-3, 0.30)], at_second_rate=[_point(1, 0.3, 0.29)]))[0]
    assert "**yes**; lr 0.0001, epoch 1: FQ 0.3, MU 0.290" in headline and "learning rates tried: 0.0001, 5e-05" in headline


def test_the_forget50_figure_draws_a_second_learning_rate_in_its_forget_sizes_panels(tmp_path):
    from benchmarks.tofu_mini import panel_rows, plot

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

    assert Image.open(tmp_path / "figure.png").size == (1200, 864)   # 10 x 7.2 inches at 120 dpi: two rows
