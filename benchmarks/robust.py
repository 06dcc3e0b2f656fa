"""Forgetting that lasts (issue 32): every method at its own learning rate, then the audit with a never-learned
control, on the forget-50 % protocol's 10 % plan.

    python benchmarks/robust.py                                  # everything (CPU: days; measured a few rows
                                                                 # per machine, the record keeps the rest)
    python benchmarks/robust.py --methods npo_rt,npo_sam         # some methods (sweep, then audit)
    python benchmarks/robust.py --stage sweep                    # only the learning-rate sweeps
    python benchmarks/robust.py --report                         # only the report, from the record

Protocol. The 20-author target and the 18-author retain model of `tofu_mini.py --forget50` (plan forget50-10pct:
TOFU authors 198-199 unlearned, authors 0-9 and 190-197 as retain data, 188-189 never trained), learned into the
same cache (runs/tofu_mini). Each method (a `Variant`: a method, maybe with a switch such as --quant-aware)
unlearns at three learning rates for the plan's five epochs, batch 4, warm-up 0.1; every epoch's checkpoint is
evaluated with the tofu suite as tofu_mini.py does (Forget Quality first, Model Utility where the rule reads it:
robust_plans.utility_needed), and the existing best-checkpoint rule (core.evaluation.selection: the highest Forget
Quality with Model Utility >= 0.9x the target's) picks one (learning rate, epoch) per method (NPO+WA: its final
epoch, since its model is the weight average written when the run ends; an earlier checkpoint is neither that nor
what a shorter run would average). That checkpoint is audited (`audit.run_audit`) with the retain model as the
control. The example split takes 20 forget answers (10 relearned, 10 measured): relearn and benign fine-tuning at
one learning-rate grid for every method (1.5e-5, 5e-5, 1.5e-4: x0.3, x1, x3 of the protocol's 5e-5;
robust_plans.ATTACK_LRS says why not the run's own), reaching up to two steps (x3) past an end of it where the
attacker did best (robust_plans.REACH; an audit made before the reach is widened, its points reused), 3 seeds
(the learning rates tried on the first, the repeats at the attacker's best), 4-bit export (q8_0, q4_k_m, q4_0)
and rephrasing. The group split relearns again on all 40 (one author's 20 answers relearned, the other's 20
measured; 2 seeds, each author relearned once). The control
is fine-tuned once for the whole table (audit --control-cache). Each method's step cost is its training runs' CPU
seconds per step over NPO+RT's on the same machine (CPU time depends less than wall time on what else the machine
runs, though not nothing: threads waiting for a busy core count; the median over a method's runs on a machine, so
one crowded or resumed run moves it little; both depend on the machine, so a machine that ran no NPO+RT sweep
times NPO+RT's protocol run once before it trains another method).

UNDO is a second stage: it starts from NPO+RT's chosen checkpoint (the teacher), damages a copy with noise
(α 0.1) and distils the teacher into it on the run's forget and retain sets, at 1e-4, 3e-4 and 9e-4 (the
paper's rate); its step cost is the distillation step's alone.

Two sanity rows follow NPO+RT: the target and the control, each audited as if it were the unlearned model (the
target its original, the same control): their relearn residuals must read ~1 and exactly 0. The audit issue's
other rows (GA, GradDiff, WGA, SatImp, CE-U, PDU) come last, at the protocol's one learning rate (no sweep),
their final models evaluated and audited as the first audit took them. Last, the mini-TOFU NPO+RT run
(tofu_mini.py's plan mini-lr5e-5, final model) is audited against its own plan's retain model (authors 0-9).

The learning rates: x0.5, x1 and x2 of the protocol's 5e-5, except for the methods that hardly moved at 5e-5
in docs/results/tofu_forget50.md (SimNPO, RMU, SURE, UNDIAL: FQ at or below the target's), which sweep x1, x2
and x4, as does NPO+RT with the q4_k_m-aware term (the q4_0 term chose its top rate); MUDMAN's rate is its own
update's step size (default 1e-3), swept x0.3, x1, x3.

Cached and resumable: runs, evaluations and audits live under runs/tofu_mini/robust (an interrupted run or
audit resumes); every figure goes into docs/results/records/robust/record.json as soon as it is measured, so
a fresh machine measures only what is missing (it learns the target and retain model again first, and
measures again the learning rate an audit or a second stage needs the weights of). Once a
sweep's epochs are evaluated only the best epoch's weights are kept. An audit recorded before quantisation and
rephrasing had intervals has those two attacks measured again (the rest kept). Writes
docs/results/robust.{md,json,png} and the summary block of docs/results/audit.md.
Run it at low priority: `chrt --idle 0 nice -n 19 python benchmarks/robust.py`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.ledger import Ledger  # noqa: E402
from benchmarks.robust_plans import (AUDIT, BASELINE_TIMING, BY_KEY, EPOCH_FIGURES, MINI, ORDER,  # noqa: E402
                                     PROTOCOL_LR, SANITY, Variant, base_plan, choose, step_seconds, sweep_plan,
                                     sweep_settings, sweep_steps, utility_needed)
from benchmarks.tofu_plans import prepare_data  # noqa: E402
from benchmarks.tofu_report import clock, require_plotting  # noqa: E402
from benchmarks.tofu_stages import (Bench, Learned, _point, _prune_checkpoints, _steps_per_epoch,  # noqa: E402
                                    _weights_worth_keeping, curve_text, learn_settings, unlearn_curve, unlearn_run,
                                    unlearn_settings)
from core.runs import RunDir  # noqa: E402

class Robust:
    """The cached stages of this benchmark over one Bench (cache, device, record)."""

    def __init__(self, bench: Bench):
        self.bench = bench
        self.base = base_plan()
        self.learned = bench.root / self.base.name
        self.files = prepare_data(self.base, self.learned)
        self.work = bench.root / "robust"
        self._models = None

    # ------------------------------------------------ the learned models
    def models(self) -> dict:
        """The target and retain runs (learned now if this machine lacks them), the target as the fluency
        reference, the retain model's evaluation and the target's point. Built once."""
        if self._models is None:
            self._models = self._learn_and_evaluate()
        return self._models

    def learn(self, plan, files: dict, target_dir: Path, retain_dir: Path) -> tuple[Path, Path]:
        """The plan's target and retain model (learned now if this machine lacks them), checkpoints pruned."""
        target = self.bench.train(target_dir, forget=files["target"], **learn_settings(plan))
        retain = self.bench.train(retain_dir, forget=files["retain"], **learn_settings(plan))
        for run in (target, retain):
            _prune_checkpoints(run, keep_weights=lambda step: False)
        return target, retain

    def _learn_and_evaluate(self) -> dict:
        from core.data import load_examples
        from core.models import open_model

        plan, bench = self.base, self.bench
        target, retain = self.learn(plan, self.files, bench.root / plan.shared_target, self.learned / "retain")
        loaded = open_model(str(target), bench.device, dtype=plan.eval_dtype)
        reference = (loaded.model, loaded.tokenizer)
        holdout = load_examples(self.files["holdout"], "holdout")
        evaluations = self.work / "eval"
        bench.evaluate(str(retain), evaluations / "retain", plan, reference, None, holdout)
        target_summary = bench.evaluate(str(target), evaluations / "target", plan, reference,
                                        evaluations / "retain", holdout)
        return {"target": target, "retain": retain, "reference": reference, "holdout": holdout,
                "retain_eval": evaluations / "retain",
                "target_point": _point(target_summary, evaluations / "target"),
                "retain_point": _point(json.loads((evaluations / "retain" / "summary.json").read_text()),
                                       evaluations / "retain")}

    # ------------------------------------------------ the sweep
    def sweep(self, variant: Variant, lr: float, again: bool = False) -> list[dict]:
        """One method at one learning rate: trained, every epoch evaluated, recorded; its points. `again`:
        measured again although recorded (the record keeps the curve it replaces)."""
        from core.models import weights_digest

        plan, ledger = sweep_plan(lr), self.bench.ledger
        settings = sweep_settings(lr)
        recorded = ledger.plan(settings).get("curves", {})
        if variant.key in recorded and not again:
            return recorded[variant.key]
        models = self.models()
        relearned = ledger.keep_models(settings, models["target_point"], models["retain_point"],
                                       weights_digest(models["target"] / "model"))
        if relearned:
            self.bench.say(relearned)
        self.time_baseline()
        learned = Learned(self.start_model(variant), models["reference"], models["retain_eval"], models["holdout"],
                          models["target_point"])
        run_dir = self.run_dir(variant, lr)
        run, points, steps_per_epoch, blown_up = unlearn_curve(self.bench, plan, self.files, learned, run_dir,
                                                               self.work / "eval" / run_dir.name,
                                                               method=variant.method, lr=lr,
                                                               figures=EPOCH_FIGURES, final_only=variant.final_only,
                                                               utility_needed=None if variant.final_only else
                                                               partial(utility_needed, variant), **variant.settings)
        ledger.keep_curve(settings, variant.key, points, blown_up)
        _prune_checkpoints(run, keep_weights=_weights_worth_keeping(points, steps_per_epoch, keep_all=False))
        self.bench.say(f"{variant.label} at lr {lr:g}: {curve_text(points)}")
        return points

    def time_baseline(self) -> None:
        """NPO+RT's CPU seconds per step on this machine, which step costs measured here are taken against (a
        step's seconds compare only within one machine): its protocol run timed once, weights not kept, where
        no NPO+RT run was timed here."""
        from benchmarks.ledger import machine

        baseline = BY_KEY["npo_rt"]
        if machine() in step_seconds(self.bench.ledger, baseline, sweep_steps()):
            return
        run = self.bench.train(self.bench.root / BASELINE_TIMING, model=str(self.models()["target"] / "model"),
                               method=baseline.method, **unlearn_settings(self.base, self.files, PROTOCOL_LR))
        shutil.rmtree(run)

    def start_model(self, variant: Variant) -> Path:
        """The model a row unlearns from: the target, or for a second stage (Variant.after) the first
        stage's chosen checkpoint, swept first if it has not been. A machine that lacks that checkpoint (the
        record outlives the runs) trains the first stage's chosen run again into a folder of its own, without
        evaluating it: the second stage's figures are its own, the first stage's row stays as recorded."""
        if variant.after is None:
            return self.models()["target"] / "model"
        first = BY_KEY[variant.after]
        choice = choose(first, {lr: self.sweep(first, lr) for lr in first.lrs})
        run = self.run_dir(first, choice["lr"])
        if not self.holds(first, choice):
            run = self.work / f"teacher-{run.name}"
            self.bench.say(f"{variant.label} starts from {first.label}'s chosen run, which the record holds but "
                           f"this machine does not: trained again into {run.name}")
            unlearn_run(self.bench, self.base, self.files, self.models()["target"] / "model", run, first.method,
                        choice["lr"], **first.settings)
        return RunDir(self.as_run(run, choice["epoch"])).model_dir

    def holds(self, variant: Variant, choice: dict) -> bool:
        """Whether this machine has the weights of the chosen (learning rate, epoch) of the row's sweep."""
        from core.checkpoint import WEIGHTS

        run = self.run_dir(variant, choice["lr"])
        if choice["epoch"] == self.base.unlearn_epochs:
            return RunDir(run).final_model_kind() is not None
        derived, checkpoint = self.epoch_folders(run, choice["epoch"])
        return RunDir(derived).final_model_kind() is not None or (checkpoint / WEIGHTS).is_file()

    def recorded_curves(self, variant: Variant) -> dict[float, list[dict] | None]:
        """Each learning rate's recorded points of the row (None where not swept yet); nothing trained."""
        return {lr: self.bench.ledger.plan(sweep_settings(lr)).get("curves", {}).get(variant.key)
                for lr in variant.lrs}

    def run_dir(self, variant: Variant, lr: float) -> Path:
        return self.work / f"{variant.key}-lr{lr:g}"

    # ------------------------------------------------ the audit
    def audit(self, variant: Variant, curves: dict[float, list[dict]]) -> dict:
        """The audit with control of the sweep's chosen (learning rate, epoch), both splits; recorded. Where
        this machine lacks the chosen weights (the record outlives the runs), that learning rate is measured
        again first, so that the audited weights are the ones whose figures the row shows; the choice is
        then made again."""
        audits = self.bench.ledger.data.setdefault("audits", {})
        choice = choose(variant, curves)
        if variant.key in audits and audits[variant.key]["choice"] == choice and complete(audits[variant.key]):
            return audits[variant.key]
        for _ in variant.lrs:   # each round measures one learning rate here: at most all of them
            if self.holds(variant, choice):
                break
            self.bench.say(f"{variant.label}: the chosen run (lr {choice['lr']:g}, epoch {choice['epoch']}) was "
                           "measured on another machine; measured again here before its audit")
            curves = {**curves, choice["lr"]: self.sweep(variant, choice["lr"], again=True)}
            choice = choose(variant, curves)
        audited = self.as_run(self.run_dir(variant, choice["lr"]), choice["epoch"])
        label = f"{variant.label} (lr {choice['lr']:g}, epoch {choice['epoch']})"
        audits[variant.key] = {"choice": choice, **self._audit_with_control(audited, label)}
        self.bench.ledger.save()
        return audits[variant.key]

    def sanity(self, key: str) -> dict:
        """A sanity row (robust_plans.SANITY): the target or the control audited as the unlearned model, the
        target as its original, against the same control; recorded."""
        rows = self.bench.ledger.data.setdefault("sanity", {})
        if key in rows and complete(rows[key], reach_matters=False):
            return rows[key]
        models = self.models()
        audited = self.work / f"sanity-{key}"
        if RunDir(audited).final_model_kind() is None:
            weights = models["target" if key == "target" else "retain"] / "model"
            model_as_run(self.unlearning_config(PROTOCOL_LR, model=str(models["target"] / "model")), weights,
                         audited)
        rows[key] = self._audit_with_control(audited, SANITY[key])
        self.bench.ledger.save()
        return rows[key]

    def mini(self) -> dict:
        """The mini-TOFU NPO+RT run (robust_plans.MINI), learned and unlearned as tofu_mini.py does (its cache
        reused where this machine has it), audited against its plan's retain model; recorded."""
        from benchmarks.tofu_plans import mini_plans

        rows = self.bench.ledger.data
        if MINI in rows and complete(rows[MINI]):
            return rows[MINI]
        plan, bench = mini_plans()[1], self.bench   # mini-lr5e-5: NPO+RT at 5e-5 on the models of plan "mini"
        files = prepare_data(plan, bench.root / plan.name)
        learned = bench.root / plan.learned_in
        target, retain = self.learn(plan, files, learned / "target", learned / "retain")
        run = bench.train(bench.root / plan.name / "unlearn-npo_rt", model=str(target / "model"), method="npo_rt",
                          **unlearn_settings(plan, files))
        rows[MINI] = self._audit_with_control(run, "the mini-TOFU NPO+RT run", retain,
                                              f"mini plan's retain model ({retain.relative_to(bench.root)})")
        self.bench.ledger.save()
        return rows[MINI]

    def unlearning_config(self, lr: float, **settings) -> dict:
        """The config a sweep run at `lr` records (Bench.train's and unlearn_curve's settings): the sanity rows
        are audited under it, so their attacks train as the methods' do and share the control's cache."""
        return self.bench.config("", method="npo_rt", **unlearn_settings(self.base, self.files, lr),
                                 **settings).to_dict()

    def _audit_with_control(self, audited: Path, label: str, control: Path | None = None,
                            control_name: str = "18-author retain model (forget50-10pct/retain)") -> dict:
        """Both splits of AUDIT on the run in `audited`, against `control` (default the retain model): what the
        record keeps."""
        from audit import run_audit, unsettled_sweeps

        control = control or self.models()["retain"]
        started, cpu = time.time(), time.process_time()
        reports = {}
        for split, setting in AUDIT["splits"].items():
            options = {**AUDIT["options"], "relearn_split": split}
            folder = audited / f"audit-{split}"
            found = finished_split(folder, control, setting, options)
            moved = unsettled_sweeps(found) if found else []
            redo = [*without_intervals(found["results"]), *moved] if found else None
            if found is not None and not redo:
                self.bench.say(f"cached: {label}, {split} split ({folder})")
                reports[split] = found
                continue
            narrower = None if found else finished_split(folder, control, setting, options, apart_from_reach=True)
            if narrower:   # its finished points are reused: only the rates the sweep reaches to are trained
                found, redo = narrower, sorted({*without_intervals(narrower["results"]),
                                                *fine_tuning(setting["attacks"] or narrower["attacks"])})
                self.bench.say(f"widening the learning-rate sweeps of {label}, {split} split ({', '.join(redo)})")
            elif moved:   # today's rules take another rate as the attacker's best: only its missing points
                self.bench.say(f"the attacker's best moved under today's rules for {', '.join(moved)} of {label}, "
                               f"{split} split: measuring the missing points")
            else:
                self.bench.say(f"auditing {label}, {split} split" if found is None else
                               f"measuring {', '.join(redo)} of {label}, {split} split, again: for their intervals")
            reports[split] = run_audit(audited, folder, attacks=redo or setting["attacks"], update=bool(redo),
                                       options=options, max_samples=setting["max_samples"], seeds=setting["seeds"],
                                       seeds_at=AUDIT["seeds_at"], device=self.bench.device, dtype=AUDIT["dtype"],
                                       control=str(control), control_cache=self.work / "control-cache",
                                       log=lambda m: print(f"    {m}", flush=True))
        self.bench.record_stage(audited / "audit", time.time() - started, time.process_time() - cpu)
        return {"control": control_name, "settings": AUDIT,
                "splits": {s: summarised(r) for s, r in reports.items()}, "measured": time.strftime("%Y-%m-%d")}

    def as_run(self, run: Path, epoch: int) -> Path:
        """The run itself when its final epoch was chosen; else a run folder holding that epoch's checkpoint
        as its final model (same config), which `unlearn audit` takes like any run."""
        final = self.base.unlearn_epochs
        if epoch == final:
            return run
        derived, checkpoint = self.epoch_folders(run, epoch)
        if RunDir(derived).final_model_kind() is None:
            checkpoint_as_run(run, checkpoint, derived)
        return derived

    def epoch_folders(self, run: Path, epoch: int) -> tuple[Path, Path]:
        """Where an earlier epoch of `run` lives: the run folder made of it (as_run) and its checkpoint."""
        step = epoch * _steps_per_epoch(self.files["forget"], self.base.unlearn_batch)
        return run.parent / f"{run.name}-epoch{epoch}", RunDir(run).checkpoints_dir / f"step-{step:06d}"


def checkpoint_as_run(run: Path, checkpoint: Path, out: Path) -> None:
    """Write `checkpoint`'s model as the final model of a new run folder `out` with `run`'s config (atomic:
    the model folder appears complete or not at all)."""
    model_as_run(RunDir(run).config(), checkpoint, out)


def model_as_run(config: dict, model: Path, out: Path) -> None:
    """A run folder `out` recording `config` whose final model is `model` (a checkpoint or model folder),
    written atomically: the model folder appears complete or not at all."""
    from core.models import open_model

    loaded = open_model(str(model), "cpu", dtype="float32")
    out.mkdir(parents=True, exist_ok=True)
    RunDir(out).write_config({**config, "out": str(out)})
    staging = out / ".model-staging"
    shutil.rmtree(staging, ignore_errors=True)
    loaded.model.save_pretrained(staging)
    loaded.tokenizer.save_pretrained(staging)
    staging.rename(RunDir(out).model_dir)


def finished_split(folder: Path, control: Path, setting: dict, options: dict,
                   apart_from_reach: bool = False) -> dict | None:
    """The split's audit report when one was written in `folder` with these settings (a benchmark stopped
    between two splits does not audit the first again), judged by the current rules; else None.
    `apart_from_reach`: also one whose sweeps reached less far past their ends (`*_lr_extend`), to widen."""
    from audit import default_attacks, get_attack, rejudged, resolve_options
    from core.runs import read_json

    report = read_json(folder / "audit.json")
    if report is None:
        return None
    names = setting["attacks"] or default_attacks()
    expected = {"attacks": names, "dtype": AUDIT["dtype"], "seeds": setting["seeds"], "seeds_at": AUDIT["seeds_at"],
                "control": str(control), "options": resolve_options([get_attack(n) for n in names], options)}
    found = {key: report.get(key) for key in expected}
    # how many forget answers it took (the benchmark's forget set has more than either split asks for)
    expected["forget_answers"], found["forget_answers"] = setting["max_samples"], report.get("samples", {}).get("forget")
    # a report keeps only the attacks' options that are not empty
    expected["options"] = {name: chosen for name, chosen in expected["options"].items() if chosen}
    expected, found = json.loads(json.dumps(expected)), json.loads(json.dumps(found))
    if apart_from_reach:
        for settings in (expected, found):
            settings["options"] = {attack: _without_reach(chosen)
                                   for attack, chosen in (settings["options"] or {}).items()}
    return rejudged(report) if found == expected else None


def fine_tuning(attacks: list[str]) -> list[str]:
    """The attacks among `attacks` that sweep learning rates."""
    from audit import get_attack

    return [name for name in attacks if any(p.name.endswith("_lr_extend") for p in get_attack(name).params)]


MEASURED_ONCE = ("quantize", "rephrase")   # the attacks that train nothing: intervals over their answers only


def without_intervals(results: list[dict]) -> list[str]:
    """The attacks measured once whose results have no interval: audited before their per-answer figures were
    kept, so measured again (`unlearn audit --update`: the fine-tuning attacks' results stay). A result whose
    every recovery is undefined (a model that forgot nothing: the target's sanity row) has none to give."""
    return [attack for attack in MEASURED_ONCE
            if any(r["name"].split(":")[0] == attack and "recovery_interval" not in r
                   and any(v is not None for v in (r.get("recovery") or {}).values()) for r in results)]


def complete(recorded: dict, reach_matters: bool = True) -> bool:
    """Whether a recorded audit was made with today's AUDIT settings and has every interval. Without
    `reach_matters`, one whose sweeps reached less far counts (a sanity row: its residual is 1 or 0 by
    construction at every learning rate, so reaching further would measure nothing new)."""
    settings = recorded.get("settings")
    same = settings == AUDIT or (not reach_matters and settings is not None
                                 and _apart_from_reach(settings) == _apart_from_reach(AUDIT))
    return same and not any(
        without_intervals([{"name": name, **result} for name, result in split["results"].items()])
        for split in recorded["splits"].values())


def _apart_from_reach(settings: dict) -> dict:
    """The settings that decide what was measured: without the sweep's reach and the rule it was judged by."""
    settings = json.loads(json.dumps(settings))
    settings.pop("judged", None)
    settings["options"] = _without_reach(settings["options"])
    return settings


def _without_reach(options: dict) -> dict:
    """Attack options without how far their learning-rate sweeps may reach (`*_lr_extend`)."""
    return {name: value for name, value in options.items() if not name.endswith("_lr_extend")}


def summarised(report: dict) -> dict:
    """What the record keeps of one audit report: per attack its verdict and figures with intervals."""
    keep = ("verdict", "worst_recovery", "worst_residual", "recovery", "recovery_interval", "residual",
            "residual_interval", "forgotten", "forgotten_interval", "retain_change", "lr", "judged_by", "forget",
            "at_edge")
    return {"overall": report["overall"], "control": report.get("control"),
            "results": {r["name"]: {**{k: r[k] for k in keep if k in r},
                                    **({"rates": [e["lr"] for e in r["sweep"]]} if "sweep" in r else {})}
                        for r in report["results"]}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(ORDER), help="which rows to measure now, comma-separated "
                                                                  f"(default all: {', '.join(ORDER)}; target and "
                                                                  "control are the audit's sanity rows)")
    parser.add_argument("--stage", choices=("all", "sweep", "audit"), default="all")
    parser.add_argument("--report", action="store_true", help="only write the report from the record")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="where runs, evaluations and audits run (fp32 either way; step costs compare rows "
                             "measured on one device only)")
    parser.add_argument("--runs-dir", default=str(REPO / "runs" / "tofu_mini"))
    parser.add_argument("--results", default=str(REPO / "docs" / "results"))
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.methods.split(",") if k.strip()]
    unknown = [k for k in keys if k not in ORDER]
    if unknown:
        parser.error(f"--methods: {', '.join(unknown)} is not one of {', '.join(ORDER)}")
    require_plotting()
    results = Path(args.results)
    ledger = Ledger(results / "records" / "robust")
    if not args.report:
        ledger.hold()
        bench = Bench(Path(args.runs_dir).resolve(), args.device, ledger)
        robust = Robust(bench)
        for key in keys:
            if key in SANITY or key == MINI:
                if args.stage != "sweep":
                    robust.sanity(key) if key in SANITY else robust.mini()
                continue
            variant = BY_KEY[key]
            if args.stage == "audit":   # what the record has swept, nothing trained now
                curves = robust.recorded_curves(variant)
                if any(points is None for points in curves.values()):
                    bench.say(f"{variant.label}: its sweep is not complete; run --stage sweep first")
                    continue
            else:
                curves = {lr: robust.sweep(variant, lr) for lr in variant.lrs}
            if args.stage in ("all", "audit"):
                robust.audit(variant, curves)
        bench.say(f"done (wall time so far, every machine: {clock(bench.count_wall())})")
    from benchmarks.robust_report import write_report

    print(write_report(ledger, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
