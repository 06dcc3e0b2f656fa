"""The fine-tuning both relearning attacks use: a copy of the unlearned model (LoRA merged in) trained with
plain NLL, the run's own LoRA / full setting, batch size and precision. The run's files are only read."""
from __future__ import annotations

import json
from pathlib import Path

from core.config import UnlearnConfig
from core.models import merged_copy, open_model
from core.trainer import train


def write_examples(examples, path: Path) -> Path:
    rows = [{"question": ex.prompt, "answer": ex.answer} if ex.is_qa else {"text": ex.answer} for ex in examples]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def finetuned_copy(context, examples, steps: int, lr: float | None, name: str):
    """The unlearned model after `steps` of NLL on `examples`: (LoadedModel, steps run)."""
    config = context.config
    merged = merged_copy(context.run, context.work / f"{name}-start")
    data = write_examples(examples, context.work / f"{name}.jsonl")
    out = context.work / name
    result = train(UnlearnConfig(
        model=str(merged), method="sft", forget=str(data), out=str(out), overwrite=True, max_steps=steps,
        batch_size=min(config.get("batch_size", 4), len(examples)), lr=lr or config.get("lr"),
        lora=bool(config.get("lora")), lora_r=config.get("lora_r", 16), lora_alpha=config.get("lora_alpha", 32),
        lora_targets=config.get("lora_targets", "all-linear"), device=context.device,
        dtype=config.get("dtype", "auto"), seed=config.get("seed", 42), save_steps=0, eval_examples=0,
        warmup_ratio=0.0), show_progress=False, log=lambda message: None)
    return open_model(str(out), context.device, dtype=context.dtype), result.step
