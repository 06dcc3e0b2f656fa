"""Checkpoints in safetensors + JSON only: no pickle is written or read, so a checkpoint from a stranger
cannot run code. A checkpoint holds the trainable weights, the optimizer moments, the scheduler, the step
and the method's state (JSON, and its tensors in method-state.safetensors), plus one file per extra weights a
method asked to save (ExtraWeights.saved); it is
written into a hidden directory and renamed into place, so it is either whole or absent."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from .errors import require
from .runs import replace_with_staged, staging_dir

WEIGHTS = "trainable.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "trainer_state.json"
METHOD_TENSORS = "method-state.safetensors"
# A method whose model is not its trained weights (NPO+WA: their average) keeps that model in its tensor state
# under this prefix, by parameter name: a checkpoint opened as a model takes it (method_model_weights).
METHOD_MODEL_PREFIX = "model."


def extra_weights_file(name: str) -> str:
    """The file of a method's saved extra weights `name` in a checkpoint."""
    return f"extra-{name}.safetensors"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters that training changes (all of them for full fine-tuning, the adapter for LoRA).
    Tied weights appear once: named_parameters() skips duplicates."""
    return {name: p.detach().contiguous().cpu() for name, p in model.named_parameters() if p.requires_grad}


def optimizer_tensors(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split a torch optimizer state_dict into tensors (for safetensors) and JSON-able metadata."""
    tensors, scalars = {}, {}
    for param_id, slots in state["state"].items():
        for slot, value in slots.items():
            key = f"{param_id}.{slot}"
            if torch.is_tensor(value):
                tensors[key] = value.detach().contiguous().cpu()
            else:
                scalars[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        param_id, slot = key.split(".", 1)
        state.setdefault(int(param_id), {})[slot] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(directory: Path, step: int, weights: dict[str, torch.Tensor], optimizer: dict, scheduler,
                    extra: dict, keep: int, extra_weights: dict[str, torch.nn.Module] | None = None,
                    method_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write checkpoint step-NNNNNN (`weights`: the trainable parameters' full tensors, trainable_state or
    core.distributed.trained_state; `optimizer`: its state_dict in torch's layout; `extra`: more
    trainer_state.json fields; `extra_weights`: modules saved whole, a file each; `method_tensors`: the
    method's tensor state, when it keeps any) and keep the newest `keep`."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:06d}"
    staging = staging_dir(f".step-{step:06d}-", directory)
    try:
        save_file(weights, str(staging / WEIGHTS))
        tensors, meta = optimizer_tensors(optimizer)
        save_file(tensors, str(staging / OPTIMIZER))
        for name, module in (extra_weights or {}).items():
            save_model(module, str(staging / extra_weights_file(name)), force_contiguous=True)   # tied weights once
        if method_tensors:
            save_file({k: v.detach().contiguous().cpu() for k, v in method_tensors.items()}, str(staging / METHOD_TENSORS))
        state = {"step": step, "optimizer": meta, "scheduler": scheduler.state_dict(), **extra}
        (staging / STATE).write_text(json.dumps(state, indent=2, default=str))
        replace_with_staged(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for old in sorted(directory.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_trainer_state(path: Path) -> dict:
    """A checkpoint's step, schedule and method state (trainer_state.json), without touching any weights."""
    return json.loads((path / STATE).read_text())


def read_checkpoint(path: Path, trainable: set[str]) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """A checkpoint's trained weights (checked against the names of the model's `trainable` parameters), its
    optimizer state_dict and its trainer state, as read: the caller puts them in place (core.distributed)."""
    weights = load_file(str(path / WEIGHTS))
    require(set(weights) == trainable, f"checkpoint {path} does not match this model and adapter",
            "resume with the settings the run was started with (they are in its config.json)")
    state = read_trainer_state(path)
    return weights, optimizer_state(load_file(str(path / OPTIMIZER)), state["optimizer"]), state


def load_trained_weights(path: Path, module) -> None:
    """Put a checkpoint's trained weights into `module` (a copy of the model being trained): it then holds
    the weights the model had at that step."""
    module.load_state_dict(load_file(str(path / WEIGHTS)), strict=False)


def load_extra_weights(path: Path, name: str, module) -> None:
    """Restore the extra weights `name` saved in checkpoint `path` into `module`, in place."""
    file = path / extra_weights_file(name)
    require(file.is_file(), f"checkpoint {path} holds no extra weights {name!r} ({file.name})",
            "resume with the method the run was started with (see its config.json), or start again with --overwrite")
    missing, unexpected = load_model(module, str(file), strict=False, device=str(next(module.parameters()).device))
    require(not missing and not unexpected, f"the extra weights {name!r} in {path} do not match this model",
            "resume with the settings the run was started with (they are in its config.json)")


def load_method_tensors(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The method's tensor state saved in checkpoint `path` (empty when it kept none)."""
    file = path / METHOD_TENSORS
    return load_file(str(file), device=str(device)) if file.is_file() else {}


def method_model_part(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of a method's tensor state that are its own model, by parameter name (prefix removed)."""
    return {name.removeprefix(METHOD_MODEL_PREFIX): value for name, value in tensors.items()
            if name.startswith(METHOD_MODEL_PREFIX)}


def method_model_weights(path: Path) -> dict[str, torch.Tensor]:
    """The weights the method's own model takes at checkpoint `path`, by parameter name (empty when its model
    is the trained weights, as for most methods). Only those are read: a method's other state can be as large
    as the weights (MUDMAN's retain-gradient mean)."""
    file = path / METHOD_TENSORS
    if not file.is_file():
        return {}
    with safe_open(str(file), framework="pt") as saved:
        return method_model_part({name: saved.get_tensor(name) for name in saved.keys()
                                  if name.startswith(METHOD_MODEL_PREFIX)})
