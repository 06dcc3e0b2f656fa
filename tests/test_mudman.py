"""MUDMAN (core/methods/mudman.py): its masking, normalisation and update order pinned by hand on small
tensors; a run on the tiny model (full and LoRA) that applies its own update (no AdamW); exact resume."""
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from conftest import StopAfter, quiet
from core.errors import UnlearnError
from core.methods import get_method
from core.methods.base import MethodSetup
from core.methods.mudman import masked_and_normalised
from core.runs import RunDir
from core.trainer import train


def test_mask_keeps_the_coordinates_whose_sign_agrees_with_the_retain_mean_and_normalises_by_the_whole_norm():
    grads = {"x": torch.tensor([3.0, -4.0]), "y": torch.tensor([0.0, 12.0])}
    retain_mean = {"x": torch.tensor([2.0, -1.0]), "y": torch.tensor([-5.0, 7.0])}
    direction, kept, norm = masked_and_normalised(grads, retain_mean)
    # ‖g‖ = √(9 + 16 + 144) = 13 before masking, N = 4 scalars: scale √4 / 13; y[0] = 0 has sign 0 ≠ -1
    assert norm == 13.0 and kept == 0.75
    assert torch.allclose(direction["x"], torch.tensor([6 / 13, -8 / 13]))
    assert torch.allclose(direction["y"], torch.tensor([0.0, 24 / 13]))


def test_a_zero_gradient_moves_nothing():
    direction, kept, norm = masked_and_normalised({"x": torch.zeros(3)}, {"x": torch.ones(3)})
    assert norm == 0.0 and torch.equal(direction["x"], torch.zeros(3))


class OneWeight(torch.nn.Module):
    """A 'model' whose only weight sits where MUDMAN trains (…mlp.gate_proj…) and one it must freeze."""

    def __init__(self, values, other=1.0):
        super().__init__()
        self.mlp = torch.nn.Module()
        self.mlp.gate_proj = torch.nn.Module()
        self.mlp.gate_proj.weight = torch.nn.Parameter(torch.tensor(values))
        self.up = torch.nn.Parameter(torch.tensor([other]))


def test_one_update_by_hand():
    """r = 0.1, μ = 0.5, α = 0.1, d = 0.5, η = 0.5; retain gradient [0.5, -0.5], adversary gradient [1, 1],
    unlearning gradient [3, 4]."""
    cls = get_method("mudman")
    method = cls(cls.resolve_params({"retaining_rate": 0.1, "retain_momentum": 0.5, "adv_lr": 0.1,
                                     "adv_decay": 0.5}))
    model, adversary = OneWeight([1.0, -1.0]), OneWeight([2.0, 0.0])
    method.prepare(MethodSetup(model, SimpleNamespace(lora=False), lambda m: None, {"adversary": adversary}))
    assert not model.up.requires_grad and not adversary.up.requires_grad   # only gate_proj trains
    name = "mlp.gate_proj.weight"
    model.mlp.gate_proj.weight.grad = torch.tensor([0.5, -0.5])
    method.adversary_grad[name] += torch.tensor([1.0, 1.0])
    method.unlearning_grad[name] += torch.tensor([3.0, 4.0])
    method.micro_batches = 1
    with torch.no_grad():
        method.update({name: model.mlp.gate_proj.weight}, 0.5, 1)
    # retain mean a = 0.5·0 + 0.5·[0.5, -0.5] = [0.25, -0.25]; θ = [1, -1] - 0.1·a = [0.975, -0.975]
    assert torch.allclose(method.retain_mean[name], torch.tensor([0.25, -0.25]))
    # adversary: [2, 0] - 0.1·[1, 1] = [1.9, -0.1], then 0.5·that + 0.5·θ = [1.4375, -0.5375]
    assert torch.allclose(adversary.mlp.gate_proj.weight, torch.tensor([1.4375, -0.5375]))
    # unlearning: ‖g‖ = 5, N = 2, scale √2/5; 4 disagrees with a's -0.25: masked; θ0 -= 0.5·3·√2/5
    expected = torch.tensor([0.975 - 0.5 * 3 * math.sqrt(2) / 5, -0.975])
    assert torch.allclose(model.mlp.gate_proj.weight, expected)
    assert method.loops == 1 and method.micro_batches == 0
    assert torch.equal(method.unlearning_grad[name], torch.zeros(2))   # gathered afresh for the next step


@pytest.fixture()
def config(tiny_config):
    # fork every 3 steps: a stop at step 3 falls right on a fork, the resumed steps 4-5 use the saved adversary
    return replace(tiny_config, method="mudman", max_steps=8, lr=3e-2, warmup_ratio=0.0,
                   method_params={"fork_every": 3})


def gate_proj_only_changed(before: dict, after: dict) -> bool:
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    return bool(changed) and all("gate_proj" in name for name in changed)


def test_a_run_raises_forget_nll_keeps_retain_and_trains_gate_proj_only(config, tiny_model_dir):
    result = train(replace(config, max_steps=12, save_steps=6), **quiet())
    before, after = result.summary["before"], result.summary["after"]
    assert after["forget_nll"] > before["forget_nll"] + 0.2
    assert abs(after["retain_nll"] - before["retain_nll"]) < 0.5 * (after["forget_nll"] - before["forget_nll"])
    run = RunDir(result.run_dir)
    assert gate_proj_only_changed(load_file(str(tiny_model_dir / "model.safetensors")),
                                  load_file(str(run.model_dir / "model.safetensors")))
    row = run.metrics()[-1]
    assert set(row) >= {"loss_retain_nll", "adversary_forget_nll", "mask_kept", "unlearning_grad_norm"}
    assert 0 < row["mask_kept"] < 1
    checkpoint = run.checkpoints()[-1]
    assert load_file(str(checkpoint / "optimizer.safetensors")) == {}    # AdamW never stepped
    assert (checkpoint / "extra-adversary.safetensors").is_file()
    state = load_file(str(checkpoint / "method-state.safetensors"))
    assert state and all(name.startswith("retain_mean.") and "gate_proj" in name for name in state)


def test_under_lora_only_gate_proj_adapters_train(config):
    result = train(replace(config, lora=True, lora_r=4, max_steps=6, lr=1e-1), **quiet())
    adapter = load_file(str(RunDir(result.run_dir).model_dir / "adapter_model.safetensors"))
    moved = [name for name, w in adapter.items() if "lora_B" in name and w.abs().sum() > 0]
    assert moved and all("gate_proj" in name for name in moved)   # B starts at 0: only gate_proj's left it
    assert result.summary["after"]["forget_nll"] > result.summary["before"]["forget_nll"]


def test_a_stopped_run_resumes_exactly(config, tmp_path):
    straight = train(replace(config, out=str(tmp_path / "straight")), **quiet())
    assert straight.state == "finished"
    interrupted = replace(config, out=str(tmp_path / "interrupted"))
    stopped = train(interrupted, **quiet(stop_event=StopAfter(2)))
    assert stopped.state == "stopped" and stopped.step == 3
    assert (RunDir(interrupted.out).latest_checkpoint() / "method-state.safetensors").is_file()
    assert train(replace(interrupted, resume=True), **quiet()).step == 8
    ours = load_file(str(tmp_path / "interrupted" / "model" / "model.safetensors"))
    theirs = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    straight_rows, resumed_rows = RunDir(straight.run_dir).metrics(), RunDir(interrupted.out).metrics()
    assert [r["mask_kept"] for r in resumed_rows] == [r["mask_kept"] for r in straight_rows]


@pytest.mark.parametrize("change, message", [
    ({"quant_aware": 1.0}, "applies its own update, which --quant-aware"),
    ({"salient_modules": 0.1}, "applies its own update, which --salient-modules"),
    ({"lora": True, "lora_targets": "q_proj,v_proj"}, "add it to --lora-targets"),
])
def test_what_mudman_refuses(config, change, message):
    with pytest.raises(UnlearnError, match=message):
        train(replace(config, **change), **quiet())


def test_its_step_size_is_lr_with_its_own_default(tiny_config):
    resolved = replace(tiny_config, method="mudman", lr=None).resolved()
    assert resolved.lr == get_method("mudman").default_lr
    assert replace(tiny_config, method="npo", lr=None).resolved().lr == 1e-5   # the others keep theirs
