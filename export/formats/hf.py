"""Hugging Face: the merged model folder every bundle is built from (safetensors, tokenizer, chat template,
generation config) kept as the artifact `hf`, the run's PEFT adapter beside it (LoRA runs); run in
transformers."""
from __future__ import annotations

import shutil
from pathlib import Path

from .base import IDENTICAL, ExportFormat, WriteJob, register_format

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@register_format
class HuggingFace(ExportFormat):
    name = "hf"
    title = "Hugging Face"
    summary = "the merged model as safetensors (+ the run's LoRA adapter), for transformers"
    order = 0
    studio_ticked = True
    goals = {"hf": IDENTICAL}

    def write(self, job: WriteJob, variants: list[str]) -> dict[str, dict]:
        if job.source.is_lora:
            with job.timed("hf"):
                copy_adapter(job.source.model_dir, job.bundle / "adapter")
        return {"hf": {"path": job.merged_dir.relative_to(job.bundle).as_posix()}}

    def open_runner(self, name: str, artifact: dict, bundle: Path):
        from core.models import load_model

        from ..hf import TorchRunner

        return TorchRunner(load_model(str(bundle / artifact["path"])), name=name)


def copy_adapter(adapter_dir: Path, target: Path) -> list[Path]:
    """The run's LoRA adapter as trained (PEFT format), for users who apply it to their own base copy."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        shutil.copy2(adapter_dir / name, target / name)
    return [target / name for name in ADAPTER_FILES]
