"""Unlearning methods, one small file each; `get_method(name)` finds them by name."""
from .base import METHODS, StepInputs, UnlearningMethod, get_method, register

__all__ = ["METHODS", "StepInputs", "UnlearningMethod", "get_method", "register"]

# Importing a method module registers it.
from . import ga, ga_kl, grad_diff, idk_dpo, npo, npo_kl, npo_rt, simnpo, yao  # noqa: E402,F401
