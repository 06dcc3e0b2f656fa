"""Unlearning methods, one file each; `get_method(name)` finds them by name.

Every module in this package is imported, and so registered, on first use: adding a method is adding its
file. Methods kept elsewhere are named in UNLEARN_METHOD_MODULES (comma-separated importable modules)."""
import importlib
import os
import pkgutil

from .base import METHODS, StepInputs, UnlearningMethod, get_method, parameter_names, register
from .params import Param

__all__ = ["METHODS", "Param", "StepInputs", "UnlearningMethod", "get_method", "parameter_names", "register",
           "unlearning_methods"]
INFRASTRUCTURE = {"base", "params"}
EXTRA_MODULES_VARIABLE = "UNLEARN_METHOD_MODULES"


def unlearning_methods() -> dict:
    """The methods offered to users for unlearning (not the learn stage or test doubles)."""
    return {name: m for name, m in sorted(METHODS.items()) if m.listed and not name.startswith("_")}


def _import_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name not in INFRASTRUCTURE:
            importlib.import_module(f"{__name__}.{module.name}")
    for name in filter(None, (n.strip() for n in os.environ.get(EXTRA_MODULES_VARIABLE, "").split(","))):
        importlib.import_module(name)


_import_all()
