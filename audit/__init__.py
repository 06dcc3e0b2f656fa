"""`unlearn audit`: does a run's forgetting survive relearning, quantisation and rephrasing?

Every attack (audit/attacks/, one module each) gives the forget-answer figures of an attacked model beside
the original's and the unlearned model's on the same forget data, and the retain figures beside them; the
recovery fraction per figure and a verdict per attack and overall follow (audit/recovery.py). The run's own
files are only read; everything an attack builds lives in a scratch folder removed afterwards."""
from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import time
from pathlib import Path

from core.errors import require
from core.runs import AUDIT_REPORT, RunDir, RunState, read_json, write_json_atomic, write_text_atomic

from . import recovery
from .attacks import AuditContext, default_attacks, get_attack, resolve_options
from .attacks.base import seeds_of
from .attacks.finetune import SEEDS_AT, point_key, settled, swept_rates
from .groups import forget_groups, spread_over_groups
from .measure import Scorer
from .report import markdown

AUDIT_JSON, AUDIT_MD = AUDIT_REPORT, "audit.md"


def run_audit(run_dir, out, attacks=None, options: dict | None = None, max_samples: int = 40,
              max_new_tokens: int = 48, batch_size: int = 8, device: str = "cpu", log=print,
              dtype: str = "auto", update: bool = False, control: str | None = None, seeds: int = 1,
              progress=None, control_cache=None, generate_batch_size: int = 32, seeds_at: str = "worst") -> dict:
    """Attack the run in `run_dir` (a path or RunDir) and write OUT/audit.json and audit.md. `attacks`: names
    (default: every attack enabled by default); `options`: attack options by their declared names (each
    attack's `params`), checked against the chosen attacks' declarations. `control`: a never-learned model
    (a folder, `bundled`, `demo`, a run) that every fine-tuning attack trains alike, the verdicts then resting
    on the residual (audit/recovery.py). `seeds`: how many times the fine-tuning attacks repeat their split
    and training, each with the next seed. `update`: redo only `attacks` and keep the other attacks' results
    of the audit already in OUT (after one attack's definition changed, or to add one), which must have
    measured the same samples. Each finished attack (and sweep point) is kept in OUT/.partial until the
    report is written: the same command after a stop resumes there. `progress(done, total)`: called as units of
    work finish (each fine-tuning of a sweep, each other attack), for a progress bar with the time left.
    `control_cache`: a folder keeping the control's attacked figures, so that audits of several runs against
    one control with the same attacks fine-tune the control once (audit/attacks/finetune.py). `seeds_at`:
    "worst" (the default) tries the learning rates on the first seed and repeats only the one where the
    attacker did best (fewer fine-tunings: 3 + 2 instead of 3 x 3); "all" repeats every learning rate with
    every seed."""
    from core.evaluation.scores import Settings

    started = time.time()
    run = RunDir(run_dir)
    require(run.holds_run(), f"{run.path} is not a run directory", "name the --out directory of a finished run")
    config = run.config()
    require(bool(config.get("forget")), f"the run in {run.path} records no forget set",
            "audit a run of `unlearn train`")
    names = default_attacks() if attacks is None else attacks
    chosen = [get_attack(name) for name in dict.fromkeys(a.strip() for a in names if a.strip())]
    require(bool(chosen), "no audit attack given", f"pass e.g. --attacks {','.join(default_attacks())}")
    chosen_options = resolve_options(chosen, options)
    # Greedy answers are generated 32 at a time: on a CPU decoding is bound by each step's overhead, and 20
    # answers in one batch take half the time of batches of 8 (the answers' NLL is fastest at 8).
    settings = Settings(max_samples=max_samples, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        generate_batch_size=generate_batch_size)
    settings.validate()
    require(isinstance(seeds, int) and seeds >= 1, f"--seeds must be a whole number of 1 or more, got {seeds!r}",
            "use --seeds 1 (one split and training per attack) or more for intervals over seeds")
    require(seeds_at in SEEDS_AT, f"--seeds-at must be one of {', '.join(SEEDS_AT)}, got {seeds_at!r}",
            "use --seeds-at all (every learning rate with every seed) or worst (the repeats at the attacker's best)")
    forget, groups, retain = _audited_sets(config, chosen, chosen_options, max_samples)
    if control:
        check_control(run, control)
    out = Path(out)
    earlier = _earlier_report(out, len(forget), len(retain or []), device, dtype) if update else None
    context = AuditContext(run=run.path, config=config, work=out / ".work", forget=forget, retain=retain,
                           measure=None, baseline=None, settings=settings, device=device, dtype=dtype, log=log,
                           seeds=seeds, seeds_at=seeds_at, control=control, groups=groups,
                           starts=out / ".work" / "starts",
                           control_cache=Path(control_cache).expanduser() if control and control_cache else None)
    for attack in chosen:        # every refusal before anything is written or loaded
        context.options = chosen_options[attack.name]
        attack.check(context)
    out.mkdir(parents=True, exist_ok=True)
    status = RunDir(out)   # audit/status.json: the studio follows (and outlives) the audit through it
    status.write_status(RunState.RUNNING, pid=os.getpid(), message="starting the attacks")
    about = {"run": str(run.path), "original": before_unlearning(run.base_model()),
             "samples": [len(forget), len(retain or [])], "max_new_tokens": max_new_tokens,
             "dtype": dtype, "options": chosen_options, "control": control, "seeds": seeds, "seeds_at": seeds_at}
    context.kept = Kept(out / PARTIAL, about, log)
    if earlier:
        _offer_earlier_points(context.kept, earlier, chosen_options, control)
    try:
        report = _attack_all(context, chosen, chosen_options, status, started, progress)
        if earlier:
            report = _merged(earlier, report)
    except KeyboardInterrupt:
        status.write_status(RunState.STOPPED, pid=os.getpid(),
                            message=f"stopped; finished attacks are kept in {out / PARTIAL}: the same command resumes")
        raise
    except Exception as exc:
        status.write_status(RunState.FAILED, pid=os.getpid(), error=str(exc))
        raise
    finally:
        shutil.rmtree(out / ".work", ignore_errors=True)
    write_json_atomic(out / AUDIT_JSON, report)
    write_text_atomic(out / AUDIT_MD, markdown(report))
    shutil.rmtree(out / PARTIAL, ignore_errors=True)
    status.write_status(RunState.FINISHED, pid=os.getpid(), message=f"overall: {report['overall']}",
                        progress=1.0)
    return report


PARTIAL = ".partial"    # OUT/.partial: each finished attack and sweep point of an audit not yet written


class Kept:
    """Results kept on disk as they finish (atomically, one JSON file each), for an audit with the same
    settings (`about`) to pick up after a stop; a folder kept for other settings is cleared."""

    def __init__(self, folder: Path, about: dict, log):
        self.folder, self.log = folder, log
        if read_json(folder / "about.json") != json.loads(json.dumps(about)):
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / "about.json", about)

    def offer(self, key: str, value: dict) -> None:
        """Keep `value` under `key` unless something is kept there already."""
        path = self._path(key)
        if read_json(path) is None:
            write_json_atomic(path, value)

    def _path(self, key: str) -> Path:
        return self.folder / (re.sub(r"[^\w.-]+", "_", key) + ".json")

    def __call__(self, key: str, compute):
        path = self._path(key)
        found = read_json(path)
        if found is not None:
            self.log(f"audit: {key} kept from the stopped audit")
            return found
        value = compute()
        write_json_atomic(path, value)
        return value


def _offer_earlier_points(kept: Kept, earlier: dict, options: dict[str, dict], control: str | None) -> None:
    """Under --update, the finished sweep points of the earlier audit, for each attack redone with the same
    options apart from its learning rates and against the same control: widening a sweep (more rates, or
    reaching further) then fine-tunes only the new points."""
    if earlier.get("control") != control:
        return
    for result in earlier["results"]:
        attack = _attack_of(result)
        if "points" in result and attack in options and _apart_from_rates(
                earlier.get("options", {}).get(attack, {})) == _apart_from_rates(options[attack]):
            for point in result["points"]:
                kept.offer(point_key(attack, point["seed"], point["lr"]), point)


def _apart_from_rates(options: dict) -> dict:
    """An attack's options without its learning rates and their reach, as JSON reads them back."""
    return json.loads(json.dumps({name: value for name, value in options.items()
                                  if not name.endswith(("_lr", "_lr_extend"))}))


def _audited_sets(config: dict, chosen: list, options: dict, max_samples: int) -> tuple[list, list | None, list | None]:
    """(forget examples, their groups when an attack splits by group, retain examples). Splitting by group,
    the examples are taken from every group in turn, so that as many subjects as possible are measured."""
    from core.data import run_examples

    forget = run_examples(config, "forget")
    retain = run_examples(config, "retain")[:max_samples] if config.get("retain") else None
    if not any(attack.needs_groups(options[attack.name]) for attack in chosen):
        return forget[:max_samples], None, retain
    groups = forget_groups(config["forget"], len(forget))
    require(groups is not None, f"the forget set {config['forget']} names no groups, so it cannot be split by group",
            "use --relearn-split example, or give forget data with a `group` field (one subject per group) or a "
            "TOFU split (grouped by author)")
    forget, groups = spread_over_groups(forget, groups, max_samples)
    return forget, groups, retain


def check_control(run: RunDir, control: str) -> None:
    """Refuse a control that cannot be set against this run: another tokenizer (the figures would not
    compare), or the run's own target (it learned the forget data)."""
    from core.models import load_tokenizer, resolve_model, run_tokenizer

    from .attacks.finetune import control_run

    target = resolve_model(run.base_model())
    as_run = control_run(control)
    source = None if as_run else resolve_model(control)
    require(source is None or not _same_model(source, target),
            f"the control {control} is the model this run unlearned from ({target}), which learned the forget data",
            "name a model that never saw the forget data: the same model family trained without it (e.g. a run "
            "fine-tuned on the retain data only), or `bundled` for a demo run")
    theirs = run_tokenizer(as_run) if as_run else load_tokenizer(source)
    ours = run_tokenizer(run)
    require(theirs.get_vocab() == ours.get_vocab(),
            f"the control {control}'s tokenizer differs from the run's ({len(theirs)} tokens against {len(ours)}): "
            "their answer NLLs would not compare",
            f"name a control of the run's model family, with the tokenizer of {target}")


def before_unlearning(spec: str) -> str:
    """The model that knew the data: a run's base, followed back through unlearning runs whose final model it is
    (a second stage, as UNDO, starts from an unlearned model: measured against that one, nothing was forgotten
    and every recovery is undefined). A learning run's final model (method sft: a target that learned the data)
    is where it stops."""
    from core.models import resolve_model

    seen = set()
    path = Path(spec)
    while _unlearned_by_a_run(path) and path.resolve() not in seen:
        seen.add(path.resolve())
        spec = resolve_model(RunDir(path.parent).base_model())
        path = Path(spec)
    return spec


def _unlearned_by_a_run(path: Path) -> bool:
    run = RunDir(path.parent)
    return (path.is_dir() and run.holds_run() and run.model_dir.resolve() == path.resolve()
            and run.config().get("method", "sft") != "sft")


def _same_model(source: str, target: str) -> bool:
    paths = [Path(p) for p in (source, target)]
    if all(p.exists() for p in paths):
        return paths[0].resolve() == paths[1].resolve()
    return source == target


def _attack_all(context: AuditContext, chosen: list, options: dict[str, dict], status: RunDir, started: float,
                progress=None) -> dict:
    from core.models import dtype_name, open_model
    from core.scoring import prompt_form, scored_on

    run, config, log, scratch = context.run, context.config, context.log, context.work
    unlearned = open_model(str(run), context.device, dtype=context.dtype)
    original = open_model(before_unlearning(unlearned.original), context.device, dtype=context.dtype)
    context.models = {"original": (original.model, original.tokenizer),
                      "unlearned": (unlearned.model, unlearned.tokenizer)}
    scored = dict(context.models)
    if context.control:
        controlled = open_model(context.control, context.device, dtype=context.dtype)
        scored["control"] = (controlled.model, controlled.tokenizer)
    scorer = Scorer(scored, context.settings)
    context.measure, context.score = scorer.measure, scorer.score
    context.baseline, context.baseline_each = scorer.baseline, scorer.baseline_each
    results = []
    units = {}
    for attack in chosen:
        context.options = options[attack.name]
        units[attack.name] = attack.units(context)
    counter = UnitCounter(sum(units.values()), status, progress)
    for attack in chosen:
        log(f"audit: {attack.name} — {attack.summary}")
        counter.now_doing(attack.name, f"{attack.name}: {attack.summary}")
        context.options = options[attack.name]
        context.tick, context.grow = counter.tick, counter.grow
        found = context.kept(f"attack-{attack.name}", lambda: _attacked(context, attack, scratch / attack.name))
        counter.finished(units[attack.name])   # an attack taken from OUT/.partial, or one that ticked less
        results += [{**result, **judged(result)} for result in found]
    return {"run": str(run), "method": config.get("method"), "attacks": [a.name for a in chosen],
            "options": {a.name: options[a.name] for a in chosen if options[a.name]},
            "dtype": dtype_name(unlearned.model.dtype), "control": context.control, "seeds": context.seeds,
            "seeds_at": context.seeds_at,
            **_summed_up(results), "samples": {"forget": len(context.forget), "retain": len(context.retain or [])},
            "scored_on": scored_on({"forget": len(context.forget), **({"retain": len(context.retain)} if context.retain
                                                                      else {})},
                                   dtype_name(unlearned.model.dtype), prompt_form(unlearned.tokenizer)),
            "wall_seconds": round(time.time() - started, 1)}


class UnitCounter:
    """Units of work done out of the audit's total: into audit/status.json (the studio's bar) and to the
    caller's progress(done, total) (the command line's)."""

    def __init__(self, total: int, status: RunDir, progress=None):
        self.total, self.status, self.progress = max(1, total), status, progress
        self.done = self.started_at = self.grown = 0   # grown: units the running attack added on the way
        self.attack, self.message = None, ""

    def now_doing(self, attack: str, message: str) -> None:
        self.attack, self.message, self.started_at = attack, message, self.done
        self._report()

    def tick(self) -> None:
        self.done = min(self.total, self.done + 1)
        self._report()

    def grow(self, units: int) -> None:
        self.total += units
        self.grown += units
        self._report()

    def finished(self, units: int) -> None:
        self.done = min(self.total, max(self.done, self.started_at + units + self.grown))
        self.grown = 0
        self._report()

    def _report(self) -> None:
        self.status.write_status(RunState.RUNNING, pid=os.getpid(), message=self.message,
                                 progress=round(self.done / self.total, 4), attack=self.attack)
        if self.progress:
            self.progress(self.done, self.total)


def _attacked(context: AuditContext, attack, work: Path) -> list[dict]:
    """One attack's results, each with its wall time; its scratch folder `work` removed afterwards."""
    attack_started = time.time()
    context.work = work
    work.mkdir(parents=True, exist_ok=True)
    try:
        found = attack.run(context)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [{**result, "seconds": round(time.time() - attack_started, 1)} for result in found]


def _earlier_report(out: Path, forget: int, retain: int, device: str, dtype: str) -> dict:
    """The audit `--update` adds to, refused unless it measured what this one will."""
    from core.models import dtype_name, inference_dtype, pick_device

    earlier = read_json(out / AUDIT_JSON)
    require(earlier is not None, f"there is no audit in {out} to update", "leave out --update to make one")
    scored_in = dtype_name(inference_dtype(dtype, pick_device(device)))
    require(earlier.get("dtype", "float32") == scored_in,
            f"the audit in {out} scored its models in {earlier.get('dtype', 'float32')}, this one would in {scored_in}",
            f"pass --dtype {earlier.get('dtype', 'float32')}, or leave out --update to redo the whole audit")
    measured = earlier.get("samples", {})
    require(measured == {"forget": forget, "retain": retain},
            f"the audit in {out} measured {measured.get('forget')} forget and {measured.get('retain')} retain "
            f"examples, this one would measure {forget} and {retain}",
            f"pass the --max-samples it was made with, or leave out --update to redo the whole audit")
    return earlier


def _attack_of(result: dict) -> str:
    return result["name"].split(":")[0]   # "quantize: gguf-q4_0" comes from the quantize attack


def _merged(earlier: dict, report: dict) -> dict:
    """The earlier audit with the redone attacks' results in place of its own, in its order of attacks."""
    redone = set(report["attacks"])
    attacks = list(dict.fromkeys(earlier["attacks"] + report["attacks"]))
    by_attack = {a: [r for r in earlier["results"] if _attack_of(r) == a] for a in attacks if a not in redone}
    by_attack.update({a: [r for r in report["results"] if _attack_of(r) == a] for a in redone})
    results = [r for a in attacks for r in by_attack[a]]
    updated = earlier.get("updated", []) + [{"attacks": report["attacks"], "at": time.strftime("%Y-%m-%d %H:%M"),
                                              "wall_seconds": report["wall_seconds"]}]
    options = {**earlier.get("options", {}), **report["options"]}
    return {**rejudged({**report, "results": results}), "attacks": attacks, "options": options, "updated": updated,
            "wall_seconds": round(earlier["wall_seconds"] + report["wall_seconds"], 1)}


def read_report(path) -> dict | None:
    """The audit report at `path` judged by today's rules (one written before a rule changed reads as it would
    now; nothing is measured), or None when there is none. Kept per file version: the studio reads it every
    second while an audit runs."""
    try:
        found = Path(path).stat()
    except OSError:
        return None
    return copy.deepcopy(_judged_report(str(path), found.st_mtime_ns, found.st_size))


@functools.lru_cache(maxsize=16)
def _judged_report(path: str, modified: int, size: int) -> dict | None:
    report = read_json(Path(path))
    return rejudged(report) if report and report.get("results") else report


def rejudged(report: dict) -> dict:
    """The report's recoveries and verdicts worked out again from its measured figures with the current
    definitions (audit/recovery.py), so that a changed rule needs no new measurement."""
    return {**report, **_summed_up([{**r, **judged(r)} for r in report["results"]])}


def unsettled_sweeps(report: dict) -> list[str]:
    """The fine-tuning attacks of a finished audit whose sweeps today's rules would take further (another
    learning rate as the attacker's best, so the repeats or the reach go elsewhere): `--update` with these
    attacks measures only the missing points."""
    config = RunDir(report["run"]).config()
    seeds = seeds_of(config, report.get("seeds", 1))
    unsettled = []
    for result in report["results"]:
        attack = _attack_of(result)
        if "points" not in result or attack in unsettled:
            continue
        options = report.get("options", {}).get(attack, {})
        rates = swept_rates(options, config, attack)
        if not settled(result["points"], seeds, rates, report.get("seeds_at", "all"),
                       options.get(f"{attack}_lr_extend", 0)):
            unsettled.append(attack)
    return unsettled


def _summed_up(results: list[dict]) -> dict:
    """The judged results with the audit's overall verdict and the rules it was judged by."""
    return {"results": results, "overall": recovery.overall({r["name"]: r["verdict"] for r in results}),
            "thresholds": {"robust_below": recovery.ROBUST, "shallow_above": recovery.SHALLOW,
                           "min_change": recovery.MIN_CHANGE}}


def judged(result: dict) -> dict:
    """A result's figures judged: recovery (and, for a fine-tuning sweep with a control, residual) per figure,
    the verdict and the largest figure; a sweep's forget and retain figures are its weakest learning rate's,
    averaged over its seeds."""
    if "points" in result:
        return _judged_sweep(result)
    forget = result["forget"]
    values = recovery.recoveries(forget["original"], forget["unlearned"], forget["attacked"],
                                 forget.get("attacked_original"))
    # per-example figures give each recovery its interval (results kept from before they did have none)
    intervals = recovery.intervals_over_examples(result["forget_each"]) if "forget_each" in result else None
    verdict, worst = recovery.verdict(values, intervals)
    judgement = {"recovery": values, "verdict": verdict, "worst_recovery": worst,
                 **({"recovery_interval": intervals} if intervals is not None else {})}
    if "retain" in result:
        judgement["retain_change"] = _retain_change(result["retain"])
    return judgement


def _judged_sweep(result: dict) -> dict:
    judgement = recovery.judge_points(result["points"])
    chosen = [p for p in result["points"] if p["lr"] == judgement["lr"]]
    judgement["forget"] = {"set": result.get("forget_set", "forget"), **_mean_figures([p["forget"] for p in chosen])}
    if all("retain" in p for p in chosen):
        judgement["retain"] = _mean_figures([p["retain"] for p in chosen])
        judgement["retain_change"] = _retain_change(judgement["retain"])
    return judgement


def _mean_figures(stages: list[dict]) -> dict:
    """{stage: {figure: mean over the seeds}} of several points' {stage: figures}, for the figures every point
    has (points kept from before the retain answers were dropped also hold a retain ROUGE-L)."""
    return {stage: {f: sum(s[stage][f] for s in stages) / len(stages) for f in stages[0][stage]
                    if all(f in s[stage] for s in stages)}
            for stage in stages[0]}


def _retain_change(retain: dict) -> dict:
    return {f: retain["attacked"][f] - retain["unlearned"][f] for f in retain["attacked"] if f in retain["unlearned"]}

