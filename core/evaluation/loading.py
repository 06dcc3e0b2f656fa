"""Open what the user asks to evaluate: a run directory, one of its checkpoints, a PEFT adapter, a plain
Hugging Face model directory, `bundled` or a hub id. LoRA adapters are merged into their base so that
evaluation runs at full speed."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import require
from ..models import load_model, load_tokenizer, pick_device, resolve_model

ADAPTER_CONFIG = "adapter_config.json"
CHECKPOINT_WEIGHTS = "trainable.safetensors"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    source: str              # what was opened, for reports
    original: str | None     # the model before unlearning (a run's base), for fluency and before/after
    run_config: dict | None  # the run's config.json when a run (or its checkpoint) was opened


def eval_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a CUDA GPU that has it (as TOFU evaluates), fp32 elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def open_model(spec: str, device: str = "auto", trust_remote_code: bool = False) -> LoadedModel:
    """Load `spec` for evaluation on `device`, in eval mode."""
    target = pick_device(device)
    dtype = eval_dtype(target)
    path = Path(spec).expanduser()
    if _is_run_dir(path):
        loaded = _open_run(path, dtype, trust_remote_code)
    elif (path / CHECKPOINT_WEIGHTS).is_file():
        loaded = _open_checkpoint(path, dtype, trust_remote_code)
    elif (path / ADAPTER_CONFIG).is_file():
        base = json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
        require(bool(base), f"{path / ADAPTER_CONFIG} names no base model", "set base_model_name_or_path in it")
        loaded = LoadedModel(_merged_adapter(path, base, dtype, trust_remote_code),
                             _tokenizer(path, base, trust_remote_code), str(path), base, None)
    else:
        source = resolve_model(spec)
        loaded = LoadedModel(load_model(source, dtype, trust_remote_code), load_tokenizer(source, trust_remote_code),
                             source, None, None)
    loaded.model.to(target).eval()
    return loaded


def _is_run_dir(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return "resolved_model" in json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def run_base(config: dict) -> str:
    return (config.get("resolved_model") or {}).get("path") or resolve_model(config.get("model", "bundled"))


def _open_run(path: Path, dtype, trust_remote_code: bool) -> LoadedModel:
    config = json.loads((path / "config.json").read_text())
    model_dir = path / "model"
    require(model_dir.is_dir(), f"the run in {path} has no final model yet (model/ is missing)",
            f"wait for it to finish (unlearn status {path}), or evaluate one of its checkpoints: {path}/checkpoints/step-...")
    base = run_base(config)
    if (model_dir / ADAPTER_CONFIG).is_file():
        model = _merged_adapter(model_dir, base, dtype, trust_remote_code)
    else:
        model = load_model(str(model_dir), dtype, trust_remote_code)
    return LoadedModel(model, _tokenizer(model_dir, base, trust_remote_code), str(path), base, config)


def _open_checkpoint(path: Path, dtype, trust_remote_code: bool) -> LoadedModel:
    """A training checkpoint holds only the trained weights: rebuild the run's model, then load them."""
    from safetensors.torch import load_file

    from ..models import add_lora

    run = path.parent.parent
    require(_is_run_dir(run), f"{path} is not inside a run directory (expected RUN/checkpoints/step-N)",
            "name a checkpoint inside a run's checkpoints/ folder")
    config = json.loads((run / "config.json").read_text())
    base = run_base(config)
    model = load_model(base, dtype, trust_remote_code)
    if config.get("lora"):
        model = add_lora(model, config["lora_r"], config["lora_alpha"], 0.0, config["lora_targets"])
    weights = load_file(str(path / CHECKPOINT_WEIGHTS))
    missing = set(weights) - {name for name, _ in model.named_parameters()}
    require(not missing, f"checkpoint {path} does not match the run's model ({len(missing)} unknown weights)",
            "check that the run's config.json is the one it was trained with")
    model.load_state_dict(weights, strict=False)
    if config.get("lora"):
        model = model.merge_and_unload()
    return LoadedModel(model, load_tokenizer(base, trust_remote_code), str(path), base, config)


def _merged_adapter(adapter_dir: Path, base: str, dtype, trust_remote_code: bool):
    from peft import PeftModel

    model = load_model(resolve_model(base), dtype, trust_remote_code)
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()


def _tokenizer(model_dir: Path, base: str, trust_remote_code: bool):
    # Runs save the tokenizer with the model; fall back to the base model's for bare adapters.
    has_tokenizer = any((model_dir / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    return load_tokenizer(str(model_dir) if has_tokenizer else resolve_model(base), trust_remote_code)
