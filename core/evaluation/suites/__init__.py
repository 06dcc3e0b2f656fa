"""Evaluation suites, one module each; `get_suite(name)` finds them by name.

Every module in this package is imported, and so registered, on first use: adding a suite is adding its
file. Suites kept elsewhere are named in UNLEARN_SUITE_MODULES (comma-separated importable modules).
`unlearn eval --suite NAME`, `unlearn suites`, the studio's Evaluate tab and the report tables are made from
the registry."""
import importlib
import os
import pkgutil

from .base import SUITES, EvalContext, Need, Suite, get_suite, register_suite

__all__ = ["SUITES", "EvalContext", "Need", "Suite", "get_suite", "register_suite"]


def _import_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")
    for name in filter(None, (n.strip() for n in os.environ.get("UNLEARN_SUITE_MODULES", "").split(","))):
        importlib.import_module(name)


_import_all()
