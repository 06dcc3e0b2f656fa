"""What export reads from a finished run directory (see docs/run-directory.md) and nothing else."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.errors import require
from core.runs import RunDir, read_json


@dataclass(frozen=True)
class RunSource:
    run_dir: Path
    model_dir: Path          # the run's model/: a full HF model or a PEFT adapter
    base_model: str          # the original model the run started from (resolved_model.path)
    is_lora: bool
    config: dict             # the run's config.json
    summary: dict            # summary.json (before -> after scores), {} if absent

    @property
    def method(self) -> str:
        return self.config.get("method", "unknown")

    @property
    def model_config(self) -> dict:
        """The model's config.json (the base model's for a LoRA run)."""
        config_dir = Path(self.base_model) if self.is_lora else self.model_dir
        return read_json(config_dir / "config.json", {})

    @property
    def architecture(self) -> str:
        """The model's Hugging Face architecture, e.g. LlamaForCausalLM."""
        return (self.model_config.get("architectures") or ["unknown"])[0]


def read_run(path: str | Path) -> RunSource:
    """Check that `path` holds a finished run with a model, and say what is missing if not."""
    run = RunDir(path)
    require(run.path.is_dir(), f"run directory {run.path} does not exist", "give the --out directory of a run")
    require(run.holds_run(), f"{run.path} is not a run directory (no config.json)",
            "give the --out directory of an `unlearn train` run")
    state = run.status().get("state")
    model_dir = run.model_dir
    has_full = (model_dir / "config.json").is_file() and any(model_dir.glob("*.safetensors"))
    has_adapter = (model_dir / "adapter_config.json").is_file()
    require(has_full or has_adapter, f"the run in {run.path} has no model to export (state: {state}, "
            f"no {model_dir.name}/ with weights)",
            "let the run finish (or resume it: unlearn train --out DIR --resume) and export again")
    config = run.config()
    base_model = (config.get("resolved_model") or {}).get("path") or ""
    if has_adapter:
        adapter = json.loads((model_dir / "adapter_config.json").read_text(encoding="utf-8"))
        base_model = base_model or adapter.get("base_model_name_or_path", "")
    require(not has_adapter or Path(base_model).is_dir(),
            f"the run's LoRA adapter needs its base model {base_model!r}, which is not a local directory",
            "restore the base model at that path (for 'bundled': unlearn prepare-model)")
    return RunSource(run_dir=run.path, model_dir=model_dir, base_model=base_model, is_lora=has_adapter,
                     config=config, summary=read_json(run.summary_path, {}))
