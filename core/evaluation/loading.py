"""Open what the user asks to evaluate: a run directory, one of its checkpoints, a PEFT adapter, a plain
Hugging Face model directory, `bundled` or a hub id. LoRA adapters are merged into their base so that
evaluation runs at full speed."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import require
from ..models import dtype_name, inference_dtype, load_model, load_tokenizer, pick_device, resolve_model
from ..run_model import ADAPTER_CONFIG, CHECKPOINT_WEIGHTS, attach_adapter, load_run_model, run_base


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    source: str              # what was opened, for reports
    original: str | None     # the model before unlearning (a run's base), for fluency and before/after
    run_config: dict | None  # the run's config.json when a run (or its checkpoint) was opened


    @property
    def dtype(self) -> str:
        """The weights' dtype, written into every result file."""
        return dtype_name(next(self.model.parameters()).dtype)


def open_model(spec: str, device: str = "auto", trust_remote_code: bool = False, dtype: str = "auto") -> LoadedModel:
    """Load `spec` for evaluation on `device` with `dtype` weights (auto: bf16 where the hardware runs it
    fast, as TOFU evaluates on GPUs), in eval mode."""
    target = pick_device(device)
    dtype = inference_dtype(dtype, target)
    path = Path(spec).expanduser()
    if _is_run_dir(path):
        loaded = _open_run(path, dtype, trust_remote_code)
    elif (path / CHECKPOINT_WEIGHTS).is_file():
        loaded = _open_checkpoint(path, dtype, trust_remote_code)
    elif (path / ADAPTER_CONFIG).is_file():
        base = json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
        require(bool(base), f"{path / ADAPTER_CONFIG} names no base model", "set base_model_name_or_path in it")
        loaded = LoadedModel(attach_adapter(path, base, dtype, trust_remote_code).merge_and_unload(),
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


def _open_run(path: Path, dtype, trust_remote_code: bool) -> LoadedModel:
    config = json.loads((path / "config.json").read_text())
    model_dir = path / "model"
    require(model_dir.is_dir(), f"the run in {path} has no final model yet (model/ is missing)",
            f"wait for it to finish (unlearn status {path}), or evaluate one of its checkpoints: {path}/checkpoints/step-...")
    base = run_base(config)
    model = load_run_model(path, dtype=dtype, trust_remote_code=trust_remote_code)
    return LoadedModel(model, _tokenizer(model_dir, base, trust_remote_code), str(path), base, config)


def _open_checkpoint(path: Path, dtype, trust_remote_code: bool) -> LoadedModel:
    run = path.parent.parent
    require(_is_run_dir(run), f"{path} is not inside a run directory (expected RUN/checkpoints/step-N)",
            "name a checkpoint inside a run's checkpoints/ folder")
    config = json.loads((run / "config.json").read_text())
    base = run_base(config)
    model = load_run_model(run, checkpoint=path, dtype=dtype, trust_remote_code=trust_remote_code)
    return LoadedModel(model, load_tokenizer(base, trust_remote_code), str(path), base, config)


def _tokenizer(model_dir: Path, base: str, trust_remote_code: bool):
    # Runs save the tokenizer with the model; fall back to the base model's for bare adapters.
    has_tokenizer = any((model_dir / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    return load_tokenizer(str(model_dir) if has_tokenizer else resolve_model(base), trust_remote_code)
