"""Rebuild a run's unlearned model from its directory, the one way the studio's probe, evaluation and
export all do it: the final `model/` (full weights, or a PEFT adapter on the run's base model), or a
training checkpoint's trained weights loaded onto the rebuilt base."""
from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import WEIGHTS as CHECKPOINT_WEIGHTS
from .errors import UnlearnError, require
from .models import add_lora, load_model, peft_quietly, resolve_model
from .runs import RunDir

ADAPTER_CONFIG = "adapter_config.json"


def run_base(config: dict) -> str:
    """The model a run started from (as resolved when it ran)."""
    return (config.get("resolved_model") or {}).get("path") or resolve_model(config.get("model", "bundled"))


def has_final_model(run: RunDir) -> bool:
    return (run.model_dir / ADAPTER_CONFIG).is_file() or (run.model_dir / "config.json").is_file()


def load_run_model(run_dir: str | Path, checkpoint: Path | None = None, merge: bool = True,
                   dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
    """The run's final model, or `checkpoint` (default: the latest one when there is no final model yet).
    merge=False keeps a LoRA run as a PEFT model, so that its adapter can be switched off."""
    run = RunDir(run_dir)
    config = run.config()
    if checkpoint is None and has_final_model(run):
        if (run.model_dir / ADAPTER_CONFIG).is_file():
            model = attach_adapter(run.model_dir, run_base(config), dtype, trust_remote_code)
            return model.merge_and_unload() if merge else model
        return load_model(str(run.model_dir), dtype, trust_remote_code)
    checkpoint = checkpoint or run.latest_checkpoint()
    require(checkpoint is not None, f"the run in {run.path} has no model or checkpoint yet",
            "wait for its first checkpoint or for it to finish")
    return _from_checkpoint(Path(checkpoint), config, merge, dtype, trust_remote_code)


def attach_adapter(adapter_dir: Path, base: str, dtype: torch.dtype = torch.float32,
                   trust_remote_code: bool = False):
    """A PEFT adapter on its base model (not merged)."""
    from peft import PeftModel

    model = load_model(resolve_model(base), dtype, trust_remote_code)
    try:
        with peft_quietly():
            return PeftModel.from_pretrained(model, str(adapter_dir))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise UnlearnError(f"the LoRA adapter in {adapter_dir} does not fit its base model {base}: {exc}",
                           "use the base model the adapter was trained on") from None


def _from_checkpoint(checkpoint: Path, config: dict, merge: bool, dtype, trust_remote_code: bool):
    """A checkpoint holds only the trained weights: rebuild the run's model, then load them."""
    from safetensors.torch import load_file

    require((checkpoint / CHECKPOINT_WEIGHTS).is_file(), f"{checkpoint} holds no {CHECKPOINT_WEIGHTS}",
            "name a checkpoint inside a run's checkpoints/ folder")
    model = load_model(run_base(config), dtype, trust_remote_code)
    if config.get("lora"):
        model = add_lora(model, config["lora_r"], config["lora_alpha"], 0.0, config["lora_targets"])
    weights = load_file(str(checkpoint / CHECKPOINT_WEIGHTS))
    unknown = set(weights) - {name for name, _ in model.named_parameters()}
    require(not unknown, f"checkpoint {checkpoint} does not match the run's model ({len(unknown)} unknown weights)",
            "check that the run's config.json is the one it was trained with")
    model.load_state_dict(weights, strict=False)
    return model.merge_and_unload() if merge and config.get("lora") else model
