"""Unlearning methods, one file each; `get_method(name)` finds them by name.

Every module in this package is imported, and so registered, on first use: adding a method is adding its
file. Methods kept elsewhere are named in UNLEARN_METHOD_MODULES (comma-separated importable modules)."""
from ..extensions import import_extensions
from .base import METHODS, StepInputs, UnlearningMethod, get_method, parameter_names, register
from .params import Param

__all__ = ["METHODS", "Param", "StepInputs", "UnlearningMethod", "get_method", "parameter_names", "register",
           "unlearning_methods"]
INFRASTRUCTURE = {"base", "params"}
EXTRA_MODULES_VARIABLE = "UNLEARN_METHOD_MODULES"


def unlearning_methods() -> dict:
    """The methods offered to users for unlearning (not the learn stage or test doubles)."""
    return {name: m for name, m in sorted(METHODS.items()) if m.listed and not name.startswith("_")}


import_extensions(__name__, __path__, EXTRA_MODULES_VARIABLE, INFRASTRUCTURE)
