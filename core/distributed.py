"""How a run is spread over processes: the engine `accelerate launch` asked for (DDP, FSDP, DeepSpeed) and the
one that really ran, what is refused before anything loads, FSDP2 on CPU processes, and the full (gathered)
weights and optimizer state a sharded model gives to checkpoints and to the final model.

accelerate 1.16 turns a launch's FSDP config into FSDP only on accelerators (its AcceleratorState picks FSDP
in the MULTI_GPU/... branch): on CPU processes it keeps MULTI_CPU, prepare() wraps plain DDP and nothing is
sharded, silently. `shard_cpu_processes` puts the FSDP plugin accelerate built from the launch's config in
place, so prepare() shards with torch's fully_shard over the gloo group, as it does on GPUs.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch

from .errors import require

FSDP_CONFIG = "configs/accelerate/fsdp.yaml"
SHARD_REPORT_ENV = "UNLEARN_SHARD_REPORT"   # a folder: each rank writes the local shapes of its parameters there


def _flag(name: str, environ=os.environ) -> bool:
    return environ.get(name, "false").lower() in ("true", "1", "yes")


def requested_engine(environ=os.environ) -> dict:
    """The engine the launch's accelerate config asked for (accelerate passes it in environment variables)."""
    if _flag("ACCELERATE_USE_DEEPSPEED", environ):
        return {"engine": "DEEPSPEED"}
    if _flag("ACCELERATE_USE_FSDP", environ):
        return {"engine": "FSDP", "fsdp_version": int(environ.get("FSDP_VERSION", "1"))}
    return {"engine": "DDP" if int(environ.get("WORLD_SIZE", "1")) > 1 else "none"}


def engine_that_ran(accelerator) -> dict:
    """The engine as it really ran, for config.json: a config that asked for FSDP but ran DDP shows here."""
    kind = str(accelerator.distributed_type).rpartition(".")[2]
    if kind == "FSDP":
        return {"engine": "FSDP", "fsdp_version": accelerator.state.fsdp_plugin.fsdp_version}
    if kind == "DEEPSPEED":
        return {"engine": "DEEPSPEED"}
    return {"engine": "DDP" if accelerator.num_processes > 1 else "none"}


def refuse_unsupported_launch(device_type: str, environ=os.environ) -> None:
    """Before accelerate starts: the launches it would crash on with a traceback, or silently run as DDP."""
    if _flag("ACCELERATE_USE_DEEPSPEED", environ):
        require(importlib.util.find_spec("deepspeed") is not None,
                "the accelerate config asks for DeepSpeed, which is not installed here",
                f"pip install deepspeed on a machine with CUDA GPUs, or launch with --config_file {FSDP_CONFIG}")
        require(device_type != "cpu", "DeepSpeed runs on CUDA GPUs only (on CPU accelerate would silently run DDP)",
                f"launch with --config_file {FSDP_CONFIG}: FSDP2 shards on CPU processes")
    if _flag("ACCELERATE_USE_FSDP", environ) and device_type == "cpu":
        version = environ.get("FSDP_VERSION", "1")
        require(version == "2", f"FSDP version {version} cannot run on CPU processes (torch refuses its "
                                "sync_module_states on cpu)",
                f"set fsdp_version: 2 in the accelerate config, as {FSDP_CONFIG} does")


def shard_cpu_processes(accelerator, environ=os.environ) -> None:
    """Make a CPU launch with an FSDP config really shard (see the module's note); FSDP2 only."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    on_cpu = state.distributed_type in (DistributedType.MULTI_CPU, DistributedType.FSDP)   # FSDP: a 2nd run here
    if not (on_cpu and accelerator.device.type == "cpu" and _flag("ACCELERATE_USE_FSDP", environ)) or \
            getattr(state, "fsdp_plugin", None) is not None:
        return
    plugin = FullyShardedDataParallelPlugin()   # from the launch's FSDP_* variables, as accelerate reads them
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    state.fsdp_plugin = plugin
    state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def peer_lost(exc: BaseException) -> bool:
    """Whether `exc` came out of a collective (torch.distributed): under several processes, what a process
    sees when another one is gone (gloo's "Connection reset by peer"), rather than a fault of this run."""
    import traceback

    if isinstance(exc, torch.distributed.DistError):
        return True
    return any("torch/distributed/" in frame.filename.replace(os.sep, "/")
               for frame in traceback.extract_tb(exc.__traceback__))


def is_sharded(accelerator) -> bool:
    """FSDP: each process holds a shard of every parameter and of its optimizer moments."""
    return str(accelerator.distributed_type).endswith("FSDP")


def _gathers_weights(accelerator) -> bool:
    """The full weights come from accelerate's get_state_dict (FSDP; DeepSpeed ZeRO-3, untested here)."""
    return is_sharded(accelerator) or str(accelerator.distributed_type).endswith("DEEPSPEED")


def write_shard_report(model, environ=os.environ) -> None:
    """With UNLEARN_SHARD_REPORT=DIR, each rank writes rank-N.json: every parameter's local and full shape
    as it holds them after prepare() (the tests' proof of sharding, read from the run itself)."""
    folder = environ.get(SHARD_REPORT_ENV)
    if not folder:
        return
    shapes = {name: {"local": list(_local(p).shape), "full": list(p.shape)} for name, p in model.named_parameters()}
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"rank-{rank}.json").write_text(json.dumps(shapes, indent=1))


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's shard on this process; any other tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


# ---------------------------------------------------------------- full state, gathered or scattered

def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def trained_state(accelerator, model) -> dict[str, torch.Tensor]:
    """The trainable parameters' full tensors by name (tied weights once), on the CPU. Under FSDP every rank
    must call it (it gathers) and rank 0 alone receives them."""
    unwrapped = accelerator.unwrap_model(model)
    names = [name for name, p in unwrapped.named_parameters() if p.requires_grad]
    if not _gathers_weights(accelerator):
        params = dict(unwrapped.named_parameters())
        return {name: params[name].detach().contiguous().cpu() for name in names}
    full = accelerator.get_state_dict(model)   # gathers; empty on ranks other than 0
    return {name: full[name].contiguous() for name in names if name in full}


def full_model_state(accelerator, model) -> dict[str, torch.Tensor] | None:
    """Under FSDP (or DeepSpeed) the whole model's weights gathered on rank 0 (every rank must call it; tied
    weights once, as save_pretrained writes them); None otherwise, where the model holds them all."""
    if not _gathers_weights(accelerator):
        return None
    unwrapped = accelerator.unwrap_model(model)
    kept = {name for name, _ in unwrapped.named_parameters()} | {name for name, _ in unwrapped.named_buffers()}
    return {name: value for name, value in accelerator.get_state_dict(model).items() if name in kept}


def optimizer_state(accelerator, model, optimizer) -> dict:
    """The optimizer's state_dict in torch's layout (parameters numbered in the order of its groups), the same
    with or without FSDP: a checkpoint resumes in one process or several. Under FSDP every rank must call it
    and rank 0 alone receives the state."""
    if not is_sharded(accelerator):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    inner = getattr(optimizer, "optimizer", optimizer)
    full = get_optimizer_state_dict(model, inner, options=_options(cpu_offload=True))
    if not full.get("state") and torch.distributed.get_rank() != 0:
        return {}
    number = {name: index for index, name in enumerate(_param_names(model, inner))}
    return {"state": {number[name]: slots for name, slots in _named_slots(model, full)},
            "param_groups": [{**group, "params": [number[name] for name in names]}
                             for group, names in zip(full["param_groups"], _group_names(model, inner))]}


def load_trained_state(accelerator, model, weights: dict[str, torch.Tensor]) -> None:
    """Put full trained weights (every rank read them) into the model: each rank keeps its shard under FSDP."""
    unwrapped = accelerator.unwrap_model(model)
    if not is_sharded(accelerator):
        unwrapped.load_state_dict(weights, strict=False)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(unwrapped, weights, options=_options(strict=False))


def load_optimizer_state(accelerator, model, optimizer, state: dict) -> None:
    """The inverse of optimizer_state: every rank passes the full state; each keeps its shard under FSDP."""
    if not is_sharded(accelerator):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    inner = getattr(optimizer, "optimizer", optimizer)
    names = _param_names(model, inner)
    by_name = {"state": {names[int(index)]: slots for index, slots in state["state"].items()},
               "param_groups": [{**group, "params": group_names}
                                for group, group_names in zip(state["param_groups"], _group_names(model, inner))]}
    set_optimizer_state_dict(model, inner, by_name, options=_options())


def _group_names(model, optimizer) -> list[list[str]]:
    """Each optimizer group's parameters by name (the first name of a tied parameter)."""
    names = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(param, name)
    return [[names[p] for p in group["params"]] for group in optimizer.param_groups]


def _param_names(model, optimizer) -> list[str]:
    return [name for group in _group_names(model, optimizer) for name in group]


def _named_slots(model, full: dict):
    """(name, slots) for each parameter the full optimizer state holds, named as _group_names names it (torch
    may key a tied parameter by its other name)."""
    aliases = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(param, []).append(name)
    for names in aliases.values():
        for alias in names:
            if alias in full["state"]:
                yield names[0], full["state"][alias]
                break
