"""--optim: AdamW with fp32 (torch), 8-bit (bitsandbytes) or bf16 moments; each checkpoints and resumes exactly."""
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from conftest import StopAfter, quiet
from core.errors import UnlearnError
from core.optimizers import AdamWBf16Moments, stochastic_bf16
from core.runs import RunDir
from core.trainer import train

pytest.importorskip("bitsandbytes")


@pytest.mark.parametrize("optim, moment_dtype", [("adamw_8bit", torch.uint8), ("adamw_bf16", torch.bfloat16)])
def test_a_stopped_run_resumes_exactly_with_low_precision_moments(tiny_config, tmp_path, optim, moment_dtype):
    config = replace(tiny_config, optim=optim, max_steps=4)
    straight = train(replace(config, out=str(tmp_path / "straight")), **quiet())
    stopped = replace(config, out=str(tmp_path / "stopped"))
    assert train(stopped, **quiet(stop_event=StopAfter(2))).state == "stopped"
    moments = load_file(str(RunDir(stopped.out).latest_checkpoint() / "optimizer.safetensors"))
    assert moment_dtype in {t.dtype for t in moments.values()}
    assert train(replace(stopped, resume=True), **quiet()).step == 4
    ours, theirs = (load_file(str(tmp_path / name / "model" / "model.safetensors")) for name in ("stopped", "straight"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert straight.summary["after"]["forget_nll"] > straight.summary["before"]["forget_nll"]


def test_bf16_moments_follow_fp32_adamw(tmp_path):
    torch.manual_seed(0)
    start = torch.randn(64, 48)
    exact, ours = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    reference, low = torch.optim.AdamW([exact], lr=1e-2), AdamWBf16Moments([ours], lr=1e-2)
    for _ in range(50):
        grad = torch.randn_like(start)
        exact.grad, ours.grad = grad.clone(), grad.clone()
        reference.step()
        low.step()
    moved = (exact - start).norm()
    assert (ours - exact).norm() < 0.01 * moved
    assert low.state[ours]["exp_avg"].dtype == low.state[ours]["exp_avg_sq"].dtype == torch.bfloat16


def test_stochastic_rounding_is_unbiased_where_nearest_would_stall():
    value = torch.full((200_000,), 1.0 + 2 ** -10)   # a quarter of bf16's step above 1: nearest rounds it to 1
    assert value.to(torch.bfloat16).float().unique().tolist() == [1.0]
    rounded = stochastic_bf16(value.clone(), torch.Generator().manual_seed(0)).float()
    assert set(rounded.unique().tolist()) == {1.0, 1.0 + 2 ** -7}
    assert rounded.mean().item() == pytest.approx(value[0].item(), abs=2e-5)


def test_an_unknown_optimizer_is_refused(tiny_config):
    with pytest.raises(UnlearnError, match="unknown optimizer 'sgd'") as raised:
        replace(tiny_config, optim="sgd").resolved()
    assert "adamw_8bit" in raised.value.fix
