"""Unlearning Studio core: make a causal language model forget a forget set while keeping the rest.

    from core import UnlearnConfig, train
    result = train(UnlearnConfig(model="bundled", method="npo_rt", forget="tofu:forget01",
                                 retain="tofu:retain99", out="runs/demo", max_steps=20))
"""
from .config import UnlearnConfig
from .errors import UnlearnError

__all__ = ["UnlearnConfig", "UnlearnError", "train"]


def train(config: UnlearnConfig, **kwargs):
    """Run an unlearning job; see core.trainer.train."""
    from .trainer import train as _train

    return _train(config, **kwargs)
