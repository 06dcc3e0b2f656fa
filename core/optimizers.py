"""The optimizers `--optim` names, all AdamW with torch's defaults (betas 0.9/0.999, eps 1e-8, decoupled weight
decay), differing in how they store the two moments between steps:

- adamw: torch's AdamW, fp32 moments (8 bytes per trained weight);
- adamw_8bit: bitsandbytes' AdamW8bit, block-wise 8-bit moments (~2 bytes per weight; tensors under 4096
  elements keep fp32 ones), on CPU and CUDA;
- adamw_bf16: bf16 moments (4 bytes per weight), below. No maintained library offers them for fp32 weights on
  a CPU: torchao's and optimi's low-precision AdamW keep the moments in the weights' dtype, bitsandbytes has
  8 or 32 bits only.
"""
from __future__ import annotations

import torch

from . import models  # noqa: F401  (its import filters bitsandbytes' log lines that need no action)
from .errors import UnlearnError

CHUNK = 1 << 20   # elements stepped at once: the fp32 temporaries stay a few MB whatever the tensor's size


def check_optimizer(name: str) -> None:
    """The optimizer's library is installed: checked before any model loads."""
    if name != "adamw_8bit":
        return
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UnlearnError("--optim adamw_8bit needs bitsandbytes, which is not installed",
                           "pip install 'bitsandbytes>=0.46' (or the project's [scale] extra), or use --optim adamw") from None


def build_optimizer(name: str, groups: list[dict], lr: float) -> torch.optim.Optimizer:
    if name == "adamw_8bit":
        return _adamw_8bit(groups, lr)
    if name == "adamw_bf16":
        return AdamWBf16Moments(groups, lr=lr)
    # fused: one kernel for all parameters, 5-8x faster than the default loop on CPU (same algorithm)
    return torch.optim.AdamW(groups, lr=lr, fused=True)


def _adamw_8bit(groups: list[dict], lr: float) -> torch.optim.Optimizer:
    import bitsandbytes

    class AdamW8bit(bitsandbytes.optim.AdamW8bit):
        """bitsandbytes' AdamW8bit with a flat state_dict(), one tensor per slot as a checkpoint stores it:
        bitsandbytes nests the quantisation state (for FSDP's gathering) and reads either form back."""

        def state_dict(self):
            state = super().state_dict()
            for slots in state["state"].values():
                slots.update(slots.pop(self._FSDP_WRAPPED_QUANT_STATE_KEY, {}))
            return state

    return AdamW8bit(groups, lr=lr)


class AdamWBf16Moments(torch.optim.Optimizer):
    """torch's AdamW (its fused kernel, run on fp32 copies), the two moments stored in bf16 between steps: half
    the memory of fp32 moments.

    Each step runs a chunk of one parameter at a time, so the fp32 copies stay small. The second moment is
    stored back with stochastic rounding (up with probability equal to the fraction cut off): rounded to
    nearest it would stall, since β2 = 0.999 moves it by 0.1 % a step and bf16 resolves 0.4 %. The first
    moment moves 10 % a step (β1 = 0.9) and is rounded to nearest. The noise comes from a generator seeded by
    the step and the parameter's position, so a resumed run rounds as the uninterrupted one would."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        position = 0
        for group in self.param_groups:
            for param in group["params"]:
                position += 1
                if param.grad is not None:
                    self._step_one(param, group, position)
        return loss

    def _step_one(self, param: torch.Tensor, group: dict, position: int) -> None:
        from torch.optim.adam import adam

        state = self.state[param]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(param, dtype=torch.bfloat16, memory_format=torch.contiguous_format)
            state["exp_avg_sq"] = torch.zeros_like(param, dtype=torch.bfloat16, memory_format=torch.contiguous_format)
        done = float(state["step"])
        state["step"] = torch.tensor(done + 1)   # a new tensor: a loaded state_dict may share the old one
        (beta1, beta2) = group["betas"]
        generator = torch.Generator(param.device).manual_seed(int(done + 1) * 1_000_003 + position)
        for weight, grad, exp_avg, exp_avg_sq in zip(*(t.view(-1).split(CHUNK) for t in (
                param.data, param.grad.contiguous(), state["exp_avg"], state["exp_avg_sq"]))):
            mean, square = exp_avg.float(), exp_avg_sq.float()
            adam([weight], [grad], [mean], [square], [], [torch.tensor(done, device=param.device)], fused=True,
                 decoupled_weight_decay=True, amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
                 weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)   # counts the step
            exp_avg.copy_(mean)
            exp_avg_sq.copy_(stochastic_bf16(square, generator))

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's loader casts every moment to its parameter's dtype: put them back in bf16 (exact: they were)."""
        super().load_state_dict(state_dict)
        for state in self.state.values():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key] = state[key].to(torch.bfloat16)


def stochastic_bf16(values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """fp32 -> bf16, unbiased: a random 16-bit number added to the bits bf16 drops, then those bits cut. Works in
    place on `values` (a scratch fp32 tensor: a third of the time of the out-of-place form)."""
    noise = torch.empty(values.shape, dtype=torch.int32, device=values.device).random_(0, 1 << 16, generator=generator)
    return values.view(torch.int32).add_(noise).bitwise_and_(-65536).view(torch.float32).to(torch.bfloat16)
