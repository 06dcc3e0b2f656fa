"""The fine-tuning both relearning attacks use, and their sweep.

A point of the sweep is one learning rate and one seed: the unlearned model (LoRA merged in, once per audit)
and, with --control, the never-learned control are fine-tuned alike — plain NLL on the same examples, the
run's own LoRA / full setting, batch size and precision, the same steps, learning rate and seed — and both
are measured on the same held-out examples, per example, so that the recovery and the residual get their
intervals (audit/recovery.py). Each finished point is kept in the audit's folder until the audit ends, so a
stopped audit picks up where it stopped. The run's files are only read."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from core.config import UnlearnConfig
from core.models import merged_copy, open_model, resolve_model, weights_digest
from core.runs import RunDir, read_json, write_json_atomic
from core.trainer import train

from ..recovery import judge_points
from .base import swept_values

TRAINED = {"unlearned": "attacked", "control": "control_attacked"}   # who is fine-tuned -> its stage


def write_examples(examples, path: Path) -> Path:
    rows = [{"question": ex.prompt, "answer": ex.answer} if ex.is_qa else {"text": ex.answer} for ex in examples]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def control_run(spec: str) -> RunDir | None:
    """The run a control names, when it names one (its final model is the control)."""
    path = Path(spec).expanduser()
    return RunDir(path) if path.is_dir() and RunDir(path).holds_run() else None


def start_of(context, who: str) -> str:
    """What fine-tuning `who` starts from: the unlearned run, merged once per audit; the control as named
    (a run: its final model, merged once)."""
    context.starts.mkdir(parents=True, exist_ok=True)
    if who == "unlearned":
        return str(merged_copy(context.run, context.starts / "unlearned"))
    run = control_run(context.control)
    return str(merged_copy(run, context.starts / "control")) if run else resolve_model(context.control)


def finetuned(context, start: str, examples, steps: int, lr: float, seed: int, name: str):
    """The model in `start` after `steps` of NLL on `examples`: (LoadedModel, steps run)."""
    config = context.config
    context.work.mkdir(parents=True, exist_ok=True)
    data = write_examples(examples, context.work / f"{name}.jsonl")
    result = train(UnlearnConfig(
        model=start, method="sft", forget=str(data), out=str(context.work / name), overwrite=True, max_steps=steps,
        batch_size=min(config.get("batch_size", 4), len(examples)), lr=lr,
        lora=bool(config.get("lora")), lora_r=config.get("lora_r", 16), lora_alpha=config.get("lora_alpha", 32),
        lora_targets=config.get("lora_targets", "all-linear"), device=context.device,
        dtype=config.get("dtype", "auto"), seed=seed, save_steps=0, eval_examples=0,
        warmup_ratio=0.0), show_progress=False, log=lambda message: None)
    return open_model(str(context.work / name), context.device, dtype=context.dtype), result.step


def sweep_units(context, attack: str) -> int:
    """Fine-tunings of a sweep: one per learning rate and seed (with --seeds-at worst: every learning rate on
    the first seed, one for each other seed) and model trained (the unlearned, the control). Rates the sweep
    reaches past its ends add theirs when tried (context.grow)."""
    rates = len(swept_rates(context.options, context.config, attack))
    points = rates + context.seeds - 1 if context.seeds_at == "worst" else rates * context.seeds
    return points * _models_trained(context)


def _models_trained(context) -> int:
    return 2 if context.control else 1


def point_key(attack: str, seed: int, lr: float) -> str:
    """The name a finished sweep point is kept under (OUT/.partial), so a stopped or widened audit reuses it."""
    return f"{attack}-seed{seed}-lr{lr:.4g}"


def sweep(context, attack: str, plans: list[tuple], steps: int, retain: list | None) -> list[dict]:
    """Every point: each plan (seed, examples trained on, name of the measured set, examples measured) at
    each of the attack's learning rates (`<attack>_lr`, "xK" of the run's own). With --seeds-at worst the
    first plan is tried at every learning rate and the others only at the attacker's best of those (the
    learning rate the verdict would take): the sweep finds the worst case, the repeats put its interval.
    While the attacker does best at the highest or lowest rate tried, the sweep reaches one step further
    that way, up to `<attack>_lr_extend` times: a worst case at the grid's end is not yet the attacker's best."""
    def point(plan, lr):
        seed, trained, name, measured = plan
        return context.kept(point_key(attack, seed, lr),
                            lambda: _point(context, attack, seed, lr, trained, (name, measured), steps, retain))

    def reached(edge, lr, tried):
        context.log(f"{attack}: the attacker did best at the {edge} learning rate tried; trying {lr:.3g} too")
        context.grow(tried * _models_trained(context))

    def repeated(best):
        context.log(f"{attack}: the attacker did best at lr {best:.4g} on seed {plans[0][0]}; the other seeds "
                    "repeat only that one")

    return swept(point, plans, swept_rates(context.options, context.config, attack), context.seeds_at,
                 context.options.get(f"{attack}_lr_extend", 0), reached, repeated)


def swept(point, plans: list, rates: list[float], seeds_at: str, extend: int, reached=None, repeated=None) -> list:
    """The sweep's course (see `sweep`), given `point(plan, lr)` -> its judged point; `reached(edge, lr, plans
    tried)` and `repeated(best rate)` are told each step past an end and the rate the repeats take."""
    tried = plans[:1] if seeds_at == "worst" else plans
    screened = [point(plan, lr) for plan in tried for lr in rates]
    for _ in range(extend):
        edge = judge_points(screened)["at_edge"]
        if edge is None:
            break
        lr = beyond(rates, edge)
        if reached:
            reached(edge, lr, len(tried))
        rates = sorted([*rates, lr])
        screened += [point(plan, lr) for plan in tried]
    if len(tried) == len(plans):
        return screened
    best = judge_points(screened)["lr"]
    if repeated:
        repeated(best)
    return screened + [point(plan, best) for plan in plans[1:]]


def settled(points: list[dict], seeds: list[int], rates: list[float], seeds_at: str, extend: int) -> bool:
    """Whether a finished sweep's `points` hold every point the sweep would ask for under today's rules (how
    the attacker's best is chosen, how far it reaches): when not, `unlearn audit --update` adds the missing
    ones and reuses these."""
    by_key = {(p["seed"], p["lr"]): p for p in points}

    def recorded(seed, lr):
        if (seed, lr) not in by_key:
            raise _Unsettled
        return by_key[(seed, lr)]

    try:
        swept(recorded, seeds, rates, seeds_at, extend)
    except _Unsettled:
        return False
    return True


class _Unsettled(Exception):
    """A point the sweep asks for was not measured."""


def beyond(rates: list[float], edge: str) -> float:
    """The next learning rate past the `edge` ("highest" or "lowest") of `rates` (two or more), by the ratio
    between the two rates at that end; rounded to 3 significant digits, so it reads (and is kept) as written."""
    ordered = sorted(rates)
    if edge == "highest":
        next_rate = ordered[-1] * ordered[-1] / ordered[-2]
    else:
        next_rate = ordered[0] * ordered[0] / ordered[1]
    return float(f"{next_rate:.3g}")


def swept_rates(options: dict, config: dict, attack: str) -> list[float]:
    """The attack's learning rates (`<attack>_lr` among its options), "xK" taken as K times the run's own."""
    return swept_values(options[f"{attack}_lr"], config.get("lr") or 1e-5)


SEEDS_AT = ("all", "worst")   # --seeds-at: every seed at every learning rate, or the repeats at the worst one


@dataclass(frozen=True)
class FineTuning:
    """One fine-tuning of a sweep point, the same for the unlearned model and the control."""
    attack: str
    trained: list
    measured: list
    retain: list | None
    steps: int
    lr: float
    seed: int


def _point(context, attack: str, seed: int, lr: float, trained: list, measured_set: tuple, steps: int,
           retain: list | None) -> dict:
    name, measured = measured_set
    who = ["unlearned", "control"] if context.control else ["unlearned"]
    stages = ("original", "unlearned", "control") if context.control else ("original", "unlearned")
    forget = dict(context.baseline(name, measured, stages))
    each = dict(context.baseline_each(name, measured, stages))
    kept_retain = dict(context.baseline("retain", retain)) if retain else None
    point = {"lr": lr, "seed": seed, "trained_on": len(trained), "measured": len(measured)}
    job = FineTuning(attack, trained, measured, retain, steps, lr, seed)
    for model in who:
        stage = TRAINED[model]
        found = (_control_kept(context, job) if model == "control" and context.control_cache
                 else _attacked(context, job, model))
        point["steps"], forget[stage], each[stage] = found["steps"], found["forget"], found["each"]
        if retain:
            kept_retain[stage] = found["retain"]
        context.tick()
    return {**point, "forget": forget, "each": each, **({"retain": kept_retain} if retain else {})}


def _attacked(context, job: FineTuning, model: str) -> dict:
    """`model` ("unlearned" or "control") fine-tuned on the job's examples, scored on the measured ones and
    the retain set: {"steps", "forget": figures, "each": per-example lists, "retain": figures}."""
    stage, name = TRAINED[model], f"{job.attack}-{model}"
    attacked, steps = finetuned(context, start_of(context, model), job.trained, job.steps, job.lr, job.seed, name)
    figures, each = context.score(attacked.model, attacked.tokenizer, job.measured, f"{job.attack} {stage}")
    found = {"steps": steps, "forget": figures, "each": each}
    if job.retain:   # damage shows in the retain NLL; greedy retain answers were ~11 % of a point's time
        found["retain"] = context.score(attacked.model, attacked.tokenizer, job.retain,
                                        f"{job.attack} {stage} retain", answers=False)[0]
    del attacked
    shutil.rmtree(context.work / name, ignore_errors=True)
    return found


CONTROL_CACHE_VERSION = 1   # raise when what an attacked control's figures mean changes


def _control_kept(context, job: FineTuning) -> dict:
    """The control's attacked figures from --control-cache when an audit of any run already measured them
    alike: the key holds everything they depend on (the control's weights, the examples, the fine-tuning, the
    scoring, the library versions), so auditing several runs against one control with the same attacks trains
    it once per learning rate and seed."""
    path = Path(context.control_cache) / f"control-{_control_key(context, job)}.json"
    found = read_json(path)
    if found is not None:
        context.log(f"audit: the control's {job.attack} fine-tuning (lr {job.lr:.4g}, seed {job.seed}) "
                    f"taken from {path}")
        return found
    found = _attacked(context, job, "control")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, found)
    return found


def _control_key(context, job: FineTuning) -> str:
    import hashlib

    import torch
    import transformers

    if context.control_digest is None:   # by content (a folder's weights), or by name (a hub id)
        start = Path(start_of(context, "control"))
        context.control_digest = weights_digest(start) if start.is_dir() else str(start)
    config = context.config
    examples = {part: [[ex.prompt, ex.answer, ex.is_qa] for ex in getattr(job, part) or []]
                for part in ("trained", "measured", "retain")}
    key = {"version": CONTROL_CACHE_VERSION, "control": context.control_digest, **examples, "steps": job.steps,
           "lr": job.lr, "seed": job.seed, "device": context.device, "dtype": context.dtype,
           "training": {k: config.get(k) for k in ("batch_size", "lora", "lora_r", "lora_alpha", "lora_targets",
                                                   "dtype")},
           "settings": vars(context.settings), "versions": [torch.__version__, transformers.__version__]}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]
