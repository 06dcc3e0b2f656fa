"""Model FLOPs utilisation (MFU), as nanoGPT reports it: the training FLOPs a run achieves per second over
what this machine's matrix multiply reaches in the training dtype, measured here, not taken from a
datasheet.

Training FLOPs per token (Kaplan et al. 2020; PaLM appendix B, without the small attention term): a
forward pass costs 2 FLOPs per weight; backward costs 2 more for the inputs' gradient and 2 more for the
weights' gradient where the weight trains. So 6N with full fine-tuning, about 4N with LoRA (the frozen
base needs no weight gradient; the adapter's own share is added).
"""
from __future__ import annotations

import functools
import time

import torch

# The probe: one [2048 x 576] @ [576 x 1536] product, the shape of SmolLM2's MLP on a 2048-token batch.
PROBE_SHAPE = (2048, 576, 1536)


@functools.lru_cache(maxsize=None)
def matmul_peak_flops(dtype: torch.dtype, device: str = "cpu", repeats: int = 20) -> float:
    """Measured FLOP/s of a large matmul in `dtype` on `device` (best of a few timings; ~0.5 s)."""
    m, k, n = PROBE_SHAPE
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(3):
        a @ b   # warm-up (and kernel selection)
        _sync(device)
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - started) / repeats)
    return 2 * m * k * n / best


def training_flops_per_token(model: torch.nn.Module) -> float:
    """6 FLOPs per trained weight, 4 per frozen one (forward + input gradient only)."""
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return 6.0 * trained + 4.0 * frozen


def peak_flops(dtype: torch.dtype, device: str = "cpu") -> float:
    """The machine's peak for work in `dtype`: its own matmul rate, or float32's where that is faster.

    A CPU without bfloat16 units (AVX2 only) emulates bf16 matmuls ~80x slower than its float32 ones;
    its hardware can still do that arithmetic at the float32 rate, so that is the peak a run is held to
    (else a bf16 run's MFU could exceed 1)."""
    peak = matmul_peak_flops(dtype, device)
    return peak if dtype == torch.float32 else max(peak, matmul_peak_flops(torch.float32, device))


def mfu(tokens_per_second: float, flops_per_token: float, dtype: torch.dtype, device: str = "cpu") -> float:
    return tokens_per_second * flops_per_token / peak_flops(dtype, device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
