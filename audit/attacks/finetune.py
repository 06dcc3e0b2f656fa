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
from pathlib import Path

from core.config import UnlearnConfig
from core.models import merged_copy, open_model, resolve_model
from core.runs import RunDir
from core.trainer import train

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
    """Fine-tunings of a sweep: one per learning rate, seed and model trained (the unlearned, the control)."""
    rates = swept_values(context.options[f"{attack}_lr"], context.config.get("lr") or 1e-5)
    return len(rates) * context.seeds * (2 if context.control else 1)


def sweep(context, attack: str, plans: list[tuple], steps: int, retain: list | None) -> list[dict]:
    """Every point: each plan (seed, examples trained on, name of the measured set, examples measured) at
    each of the attack's learning rates (`<attack>_lr`, "xK" of the run's own)."""
    rates = swept_values(context.options[f"{attack}_lr"], context.config.get("lr") or 1e-5)
    return [context.kept(f"{attack}-seed{seed}-lr{lr:.4g}",
                         lambda: _point(context, attack, seed, lr, trained, (name, measured), steps, retain))
            for seed, trained, name, measured in plans for lr in rates]


def _point(context, attack: str, seed: int, lr: float, trained: list, measured_set: tuple, steps: int,
           retain: list | None) -> dict:
    name, measured = measured_set
    who = ["unlearned", "control"] if context.control else ["unlearned"]
    stages = ("original", "unlearned", "control") if context.control else ("original", "unlearned")
    forget = dict(context.baseline(name, measured, stages))
    each = dict(context.baseline_each(name, measured, stages))
    kept_retain = dict(context.baseline("retain", retain)) if retain else None
    point = {"lr": lr, "seed": seed, "trained_on": len(trained), "measured": len(measured)}
    for model in who:
        stage = TRAINED[model]
        attacked, point["steps"] = finetuned(context, start_of(context, model), trained, steps, lr, seed,
                                             f"{attack}-{model}")
        forget[stage], each[stage] = context.score(attacked.model, attacked.tokenizer, measured, f"{attack} {stage}")
        if retain:
            kept_retain[stage] = context.score(attacked.model, attacked.tokenizer, retain, f"{attack} {stage} retain")[0]
        del attacked
        shutil.rmtree(context.work / f"{attack}-{model}", ignore_errors=True)
        context.tick()
    return {**point, "forget": forget, "each": each, **({"retain": kept_retain} if retain else {})}
