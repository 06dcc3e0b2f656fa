"""Unlearning methods, one small file each; `get_method(name)` finds them by name."""
from .base import METHODS, StepInputs, UnlearningMethod, get_method, register

__all__ = ["METHODS", "StepInputs", "UnlearningMethod", "get_method", "register", "unlearning_methods"]


def unlearning_methods() -> dict:
    """The methods offered to users for unlearning (not the learn stage or test doubles)."""
    return {name: m for name, m in sorted(METHODS.items()) if m.listed and not name.startswith("_")}

# Importing a method module registers it.
from . import ga, ga_kl, grad_diff, idk_dpo, npo, npo_kl, npo_rt, sft, simnpo, yao  # noqa: E402,F401
