"""Model FLOPs utilisation: the FLOPs count by hand on a small module, and a run's summary carries it."""
from dataclasses import replace

import pytest
import torch

from conftest import quiet
from core import flops
from core.trainer import train


def test_training_flops_count_six_per_trained_and_four_per_frozen_weight():
    frozen = torch.nn.Linear(3, 2, bias=False).requires_grad_(False)   # 6 weights
    trained = torch.nn.Linear(2, 2)                                    # 4 weights + 2 biases
    assert flops.training_flops_per_token(torch.nn.Sequential(frozen, trained)) == 4 * 6 + 6 * 6


def test_mfu_is_achieved_over_measured_peak(monkeypatch):
    monkeypatch.setattr(flops, "matmul_peak_flops", lambda dtype, device="cpu": 1e12)
    assert flops.mfu(tokens_per_second=1000, flops_per_token=5e8, dtype=torch.float32) == pytest.approx(0.5)


def test_bf16_work_is_held_to_the_float32_peak_where_bf16_matmuls_are_emulated_and_slower(monkeypatch):
    rates = {torch.float32: 1e11, torch.bfloat16: 1e9}   # an AVX2-only CPU: bf16 about 100x slower
    monkeypatch.setattr(flops, "matmul_peak_flops", lambda dtype, device="cpu": rates[dtype])
    assert flops.peak_flops(torch.bfloat16) == 1e11
    rates[torch.bfloat16] = 4e11                           # AMX: bf16 faster, its own rate is the peak
    assert flops.peak_flops(torch.bfloat16) == 4e11


def test_measured_peak_is_a_real_rate():
    fp32 = flops.matmul_peak_flops(torch.float32)
    assert 1e9 < fp32 < 1e15   # between a slow core and a GPU: a timing, not a constant


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_finished_run_reports_tokens_per_second_and_mfu(tiny_config, dtype):
    summary = train(replace(tiny_config, dtype=dtype), **quiet()).summary
    assert summary["tokens_per_second"] > 0 and 0 < summary["mfu"] < 1 and summary["mfu_dtype"] == dtype
