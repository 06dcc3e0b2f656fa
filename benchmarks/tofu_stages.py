"""Mini-TOFU's stages, each cached under the runs folder: learning the target and retain models, unlearning
with each method, evaluating every epoch's checkpoint, and pruning the checkpoints once evaluated. What each
stage measures goes into the record (benchmarks/ledger.py) as soon as it exists."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.ledger import Ledger
from benchmarks.tofu_claims import best_point, forget_quality_over
from benchmarks.tofu_plans import Plan, eval_records, label, prepare_data
from benchmarks.tofu_report import clock


class Bench:
    """One invocation's stages: where they cache (`root`), the device, and the record they add to."""

    def __init__(self, root: Path, device: str, ledger: Ledger, keep_checkpoints: bool = False):
        self.root, self.device, self.ledger, self.started = root, device, ledger, time.time()
        self.keep_checkpoints = keep_checkpoints
        self.counted = self.started   # wall time up to here is already in the ledger

    def say(self, message: str) -> None:
        print(f"[{clock(time.time() - self.started)}] {message}", flush=True)
        self.count_wall()

    def count_wall(self) -> float:
        """Add the time since the last call to the record's running total (an interrupted invocation
        keeps what it spent up to its last stage), and return the total."""
        now = time.time()
        total = self.ledger.add_wall(now - self.counted)
        self.counted = now
        return total

    def train(self, out: Path, **settings) -> Path:
        """Train (or reuse / resume) one run; returns its directory."""
        from core.config import UnlearnConfig
        from core.errors import UnlearnError
        from core.runs import RunDir, RunState
        from core.trainer import train

        run = RunDir(out)
        blown_up = diverged(out)
        if run.holds_run() and (blown_up or run.status().get("state") == RunState.FINISHED):
            self.say(f"cached: {out}" + (" (diverged)" if blown_up else ""))
            return out
        resume = run.holds_run()
        self.say(f"{'resuming' if resume else 'training'} {out.name} ({settings.get('method')})")
        started, cpu_started = time.time(), time.process_time()
        config = UnlearnConfig(out=str(out), resume=True) if resume else self.config(out, **settings)
        result = None
        try:
            result = train(config, show_progress=False, log=lambda m: None)
        except UnlearnError:
            blown_up = diverged(out)
            if not blown_up:
                raise
            self.say(f"{out.name} diverged: {blown_up}")   # a result too: evaluate the epochs it reached
            return out
        finally:   # the steps are known only when the run returned: a stopped or failed one counts none
            self.record_stage(out, time.time() - started, time.process_time() - cpu_started,
                              steps=result.steps_run if result else None)
        assert result.state == RunState.FINISHED, f"{out} ended {result.state}"
        return out

    def config(self, out: Path | str, **settings):
        """The UnlearnConfig of a new run of this benchmark into `out`."""
        from core.config import UnlearnConfig

        return UnlearnConfig(out=str(out), device=self.device, eval_examples=8, logging_steps=5, **settings)

    def record_stage(self, path: Path, seconds: float, cpu_seconds: float, steps: int | None = None) -> None:
        """Wall and CPU seconds per stage (a run or an evaluation), and a run's optimizer steps taken in them.
        CPU time (this process, all threads) hardly depends on what else the machine runs."""
        self.ledger.add_stage(str(path.relative_to(self.root)), seconds, cpu_seconds, steps)

    def evaluate(self, model: str, out: Path, plan: Plan, reference, retain_eval: Path | None,
                 holdout, figures: str = "all") -> dict:
        """The tofu suite on `model` (a run, checkpoint or model dir), cached by its summary.json where that holds
        `figures` (run_tofu's figure sets: "selection", only Forget Quality and Model Utility; "forget_quality",
        the forget set alone)."""
        from core.evaluation.scores import Settings
        from core.evaluation.suites.tofu import figures_cover, run_tofu
        from core.models import open_model

        summary_path = out / "summary.json"
        if summary_path.is_file():
            cached = json.loads(summary_path.read_text())
            if figures_cover(cached.get("figures_set", "all"), figures):
                return cached
        _require_weights(Path(model))
        self.say(f"evaluating {Path(model).relative_to(self.root) if Path(model).is_relative_to(self.root) else model}"
                 f" ({plan.eval_dtype}{'' if figures == 'all' else ', ' + figures + ' figures'})")
        started, cpu_started = time.time(), time.process_time()
        loaded = open_model(model, self.device, dtype=plan.eval_dtype)
        settings = Settings(max_samples=max(plan.eval_sizes.values()), max_new_tokens=plan.max_new_tokens,
                            batch_size=plan.eval_batch)
        summary = run_tofu(loaded, out, settings, plan.forget_split, reference, holdout, retain_eval,
                           records=eval_records(plan), reference_name="target model", figures=figures)
        del loaded
        self.record_stage(out, time.time() - started, time.process_time() - cpu_started)
        return summary


def learn_settings(plan: Plan) -> dict:
    """How the plan's target and retain model learn their authors from the bundled model (Bench.train)."""
    return dict(method="sft", epochs=plan.learn_epochs, lr=plan.learn_lr, batch_size=plan.learn_batch,
                save_steps=50, warmup_ratio=0.1, model="bundled", dtype=plan.train_dtype)


def unlearn_settings(plan: Plan, files: dict, lr: float | None = None) -> dict:
    """How the plan unlearns (Bench.train): its forget and retain data, epochs, learning rate (`lr`, default
    the plan's), batch, warm-up and weights dtype."""
    return dict(forget=files["forget"], retain=files["retain"], epochs=plan.unlearn_epochs,
                lr=lr or plan.unlearn_lr, batch_size=plan.unlearn_batch, warmup_ratio=0.1, dtype=plan.train_dtype)


def run_plan(plan: Plan, bench: Bench, only: tuple[str, ...] | None = None) -> dict:
    """The plan's result: what the ledger records, plus the methods (of `only`, if given) it lacks, measured now."""
    from core.data import load_examples
    from core.models import open_model, weights_digest

    settings = asdict(plan)
    recorded = bench.ledger.plan(settings).get("curves", {})
    missing = [m for m in plan.methods if (only is None or m in only) and m not in recorded]
    if not missing and (result := bench.ledger.result(settings, plan.methods)):
        bench.say(f"{plan.name}: nothing left to measure; taken from {bench.ledger.path}")
        return result
    root = bench.root / plan.name
    learned = bench.root / (plan.learned_in or plan.name)
    files = prepare_data(plan, root)
    learn = learn_settings(plan)
    target = bench.train(_target_dir(plan, bench.root, learned), forget=files["target"], **learn)
    if not bench.keep_checkpoints:   # a finished learn run's checkpoints only served resuming it
        _prune_checkpoints(target, keep_weights=lambda step: False)
    holdout = load_examples(files["holdout"], "holdout") if "holdout" in files else None

    target_model = open_model(str(target), bench.device, dtype=plan.eval_dtype)
    reference = (target_model.model, target_model.tokenizer)   # fluency is judged by the target model
    retain_eval = bench.ledger.retain_eval(settings)
    if retain_eval is None:   # learned and evaluated once; its evaluation is all that is needed of it
        retain = bench.train(learned / "retain", forget=files["retain"], **learn)
        if not bench.keep_checkpoints:
            _prune_checkpoints(retain, keep_weights=lambda step: False)
        bench.evaluate(str(retain), eval_dir(learned, plan) / "retain", plan, reference, None, holdout)
        retain_eval = bench.ledger.keep_retain_eval(settings, eval_dir(learned, plan) / "retain")
    retain_summary = json.loads((retain_eval / "summary.json").read_text())
    target_summary = bench.evaluate(str(target), eval_dir(learned, plan) / "target", plan, reference, retain_eval,
                                    holdout)
    target_point = _point(target_summary, eval_dir(learned, plan) / "target")
    relearned = bench.ledger.keep_models(settings, target_point, _point(retain_summary, retain_eval),
                                         weights_digest(target / "model"))
    if relearned:
        bench.say(relearned)

    learned = Learned(target / "model", reference, retain_eval, holdout, target_point)
    for method in missing:
        run, points, steps_per_epoch, blown_up = unlearn_curve(bench, plan, files, learned, root / f"unlearn-{method}",
                                                               eval_dir(root, plan) / method, method=method)
        bench.ledger.keep_curve(settings, method, points, blown_up)
        _prune_checkpoints(run, keep_weights=_weights_worth_keeping(points, steps_per_epoch, bench.keep_checkpoints))
        bench.say(f"{label(method)}: {curve_text(points)}")
    return bench.ledger.result(settings, plan.methods)


@dataclass(frozen=True)
class Learned:
    """What every unlearning run of a plan starts from and is measured against."""
    target: Path                 # the target's model folder: unlearning starts from it
    reference: tuple             # (model, tokenizer) judging fluency
    retain_eval: Path            # the retain model's evaluation (Forget Quality compares with it)
    holdout: list | None         # the never-trained authors (the MIA's non-members)
    target_point: dict           # the target's evaluation: epoch 0 of every curve


def unlearn_curve(bench: Bench, plan: Plan, files: dict, learned: Learned, run_dir: Path, evals: Path,
                  method: str, lr: float | None = None, figures: str = "all", final_only: bool = False,
                  utility_needed=None, **settings) -> tuple[Path, list[dict], int, str | None]:
    """One method unlearned from the target with the plan's budget (at `lr`, default the plan's; `settings`:
    more UnlearnConfig fields, e.g. a switch), every epoch's checkpoint evaluated into `evals`-epochN (with
    `figures`, as Bench.evaluate; with `final_only` only the last epoch reached): (run, points from epoch 0,
    steps per epoch, the trainer's message if the loss blew up). With `utility_needed` (points -> the epochs
    whose Model Utility a choice still reads), every epoch is evaluated for its forget figures first, and then
    with `figures` only the epochs it names, until it names none: the others' points have no Model Utility."""
    steps_per_epoch = _steps_per_epoch(files["forget"], plan.unlearn_batch)
    run = unlearn_run(bench, plan, files, learned.target, run_dir, method, lr, **settings)
    blown_up = diverged(run)
    epochs = _epoch_models(run, plan.unlearn_epochs, steps_per_epoch, blown_up is not None)
    models = dict(epochs[-1:] if final_only else epochs)

    def evaluated(epoch: int, which: str) -> dict:
        out = evals.parent / f"{evals.name}-epoch{epoch}"
        summary = bench.evaluate(str(models[epoch]), out, plan, learned.reference, learned.retain_eval,
                                 learned.holdout, which)
        return {"epoch": epoch, **_point(summary, out)}

    points = [{"epoch": 0, **learned.target_point},
              *(evaluated(epoch, "forget_quality" if utility_needed else figures) for epoch in models)]
    while utility_needed and (needed := utility_needed(points)):
        for epoch in needed:
            point = evaluated(epoch, figures)
            if point["mu"] is None:
                raise SystemExit(f"{run}: epoch {epoch}'s {figures} evaluation has no Model Utility")
            points = [point if p["epoch"] == epoch else p for p in points]
    return run, points, steps_per_epoch, blown_up


def curve_text(points: list[dict]) -> str:
    """'ep1 FQ 0.054 MU 0.325, ep2 FQ 0.097 MU -' (-: Model Utility not needed, so not evaluated)."""
    return ", ".join(f"ep{p['epoch']} FQ {p['fq']:.2g} MU " + ("-" if p["mu"] is None else f"{p['mu']:.3f}")
                     for p in points)


def unlearn_run(bench: Bench, plan: Plan, files: dict, target: Path, run_dir: Path, method: str,
                lr: float | None = None, **settings) -> Path:
    """One method unlearned from `target` with the plan's budget (at `lr`, default the plan's), a checkpoint
    kept per epoch; the run (Bench.train: cached, resumed)."""
    return bench.train(run_dir, model=str(target), method=method, **unlearn_settings(plan, files, lr),
                       save_steps=_steps_per_epoch(files["forget"], plan.unlearn_batch),
                       save_total_limit=plan.unlearn_epochs + 5, **settings)


def eval_dir(root: Path, plan: Plan) -> Path:
    """Evaluations are cached per weights dtype (fp32 keeps the plain name of the caches made before)."""
    return root / ("eval" if plan.eval_dtype == "float32" else f"eval-{plan.eval_dtype}")


def _target_dir(plan: Plan, bench_root: Path, plan_root: Path) -> Path:
    """Plans that learn the same authors (--full's three, --forget50's two) share one target model."""
    return bench_root / plan.shared_target if plan.shared_target else plan_root / "target"


def diverged(run: Path) -> str | None:
    """The trainer's message when the run stopped on a non-finite loss (gradient ascent's blow-up)."""
    from core.runs import RunDir, RunState

    status = RunDir(run).status()
    error = status.get("error") or ""
    return error if status.get("state") == RunState.FAILED and "non-finite" in error else None


def _prune_checkpoints(run: Path, keep_weights) -> None:
    """Once a run's epochs are evaluated, what only resuming needs is dead weight: the AdamW moments (twice the
    weights) and a method's extra model copies (MUDMAN's adversary: 0.6 GB a checkpoint). Of the rest, only
    the checkpoints `keep_weights(step)` asks for are worth the disk, with the method's tensor state (NPO+WA's
    average is part of its model): a full fine-tuning checkpoint of the 135M model is 0.5 GB, and --forget50
    makes 70 of them. The checkpoint folders stay, so the cached evaluations still line up with their epochs."""
    from core.checkpoint import METHOD_TENSORS, OPTIMIZER, WEIGHTS, extra_weights_file

    for checkpoint in (run / "checkpoints").glob("step-*"):
        dead = [checkpoint / OPTIMIZER, *checkpoint.glob(extra_weights_file("*"))]
        if not keep_weights(int(checkpoint.name.split("-")[1])):
            dead += [checkpoint / WEIGHTS, checkpoint / METHOD_TENSORS]
        for file in dead:
            file.unlink(missing_ok=True)


def _weights_worth_keeping(points: list[dict], steps_per_epoch: int, keep_all: bool):
    """Every epoch's weights with --keep-checkpoints (or when no epoch was evaluated), else the best one's."""
    if keep_all or len(points) == 1:
        return lambda step: True
    best_step = best_point(points, points[0]["mu"])["evaluation"]["epoch"] * steps_per_epoch
    return lambda step: step == best_step


def _require_weights(model: Path) -> None:
    """A checkpoint whose weights were dropped after its evaluation cannot be evaluated again."""
    from core.checkpoint import STATE, WEIGHTS

    if (model / STATE).is_file() and not (model / WEIGHTS).is_file():
        raise SystemExit(f"{model}: its weights were dropped once it was evaluated, and its evaluation is gone "
                         f"from the cache; delete {model.parent.parent} to retrain it, and pass "
                         "--keep-checkpoints to keep every epoch's weights")


def _steps_per_epoch(path: str, batch: int) -> int:
    rows = sum(1 for line in Path(path).read_text().splitlines() if line.strip())
    return max(1, -(-rows // batch))


def _epoch_models(run: Path, epochs: int, steps_per_epoch: int, blew_up: bool) -> list[tuple[int, Path]]:
    """The checkpoint at every epoch boundary, then the final model. A checkpoint written when an
    interrupted run stopped mid-epoch is not an epoch boundary and is skipped."""
    found = {int(c.name.split("-")[1]): c for c in (run / "checkpoints").glob("step-*")}
    models = [(epoch, found.get(epoch * steps_per_epoch)) for epoch in range(1, epochs)]
    if blew_up:   # only the epochs finished before the loss became non-finite
        return [(epoch, path) for epoch, path in models if path is not None]
    missing = [epoch for epoch, path in models if path is None]
    assert not missing, f"{run}: no checkpoint for epoch(s) {missing}; delete the run to redo it"
    return models + [(epochs, run)]


def _point(summary: dict, evaluated: Path) -> dict:
    """What the record keeps of one evaluation: its figures, and the forget answers' truth ratios (what Forget
    Quality is computed from, so that it can be computed again over fewer answers)."""
    figures = summary["figures"]
    fluency = summary["fluency"]   # none from a "selection" evaluation, nor Forget ROUGE; a "forget_quality"
    # one has no Model Utility or retain figures either (None)
    point = {"fq": figures.get("Forget Quality"), "mu": figures.get("Model Utility"),
             "forget_rouge": figures.get("Forget ROUGE"), "forget_prob": figures["Forget Prob."],
             "forget_fluency": fluency.get("Forget"), "retain_fluency": fluency.get("Retain"),
             "retain_rouge": figures.get("Retain ROUGE"), "forget_truth_ratio": figures["Forget Truth Ratio"],
             "retain_prob": figures.get("Retain Prob."), "retain_truth_ratio": figures.get("Retain Truth Ratio"),
             "eval_seconds": summary.get("wall_seconds"), "forget_truth_ratios": forget_truth_ratios(evaluated)}
    if "mia" in summary:
        point.update(mia_auc=summary["mia"]["auc"], privleak=summary["mia"].get("privacy_leakage"))
    return point


def forget_truth_ratios(evaluated: Path) -> list[float]:
    """The forget answers' truth ratios of an evaluation folder, in sample order (as Forget Quality reads them)."""
    from core.evaluation.suites.tofu import read_eval_output
    from core.evaluation.tofu_metrics import forget_ratios

    return forget_ratios(read_eval_output(evaluated)["logs"]).tolist()


def fill_truth_ratios(bench: Bench, plan: Plan) -> int:
    """Give the points recorded before truth ratios were kept (2026-12-02) their ratios, from this machine's cached
    evaluations where it has them. Those are the recorded evaluations themselves (a recorded method is never
    measured again; the target's only while its weights are the recorded ones), and each fill is checked: the
    ratios must give the recorded Forget Quality again. Returns how many points were filled."""
    from core.models import weights_digest

    settings = asdict(plan)
    lacking = [(name, point) for name, point in bench.ledger.points(settings) if "forget_truth_ratios" not in point]
    retain_folder = bench.ledger.retain_eval(settings)
    if not lacking or retain_folder is None:
        return 0
    learned = bench.root / (plan.learned_in or plan.name)
    target = _target_dir(plan, bench.root, learned) / "model"
    same_target = target.is_dir() and weights_digest(target) == bench.ledger.plan(settings)["target_weights"]
    retain = forget_truth_ratios(retain_folder)

    def cached(name) -> Path | None:
        if name == "target" or name[1] == 0:
            return eval_dir(learned, plan) / "target" if same_target else None
        method, epoch = name
        return eval_dir(bench.root / plan.name, plan) / f"{method}-epoch{epoch}"

    filled = 0
    for name, point in lacking:
        if name == "retain":
            point["forget_truth_ratios"] = retain
            filled += 1
            continue
        folder = cached(name)
        if folder is None or not (folder / "summary.json").is_file():
            continue
        ratios = forget_truth_ratios(folder)
        if point["fq"] != forget_quality_over(ratios, retain):
            bench.say(f"{plan.name}: {name}'s cached evaluation does not give its recorded Forget Quality; left out")
            continue
        point["forget_truth_ratios"] = ratios
        filled += 1
    if filled:
        bench.ledger.save()
        bench.say(f"{plan.name}: truth ratios of {filled} recorded points taken from this machine's evaluations")
    return filled

