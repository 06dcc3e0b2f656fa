"""Evaluation suites, one module each (tofu, quick, muse, mcq); `get_suite(name)` finds them by name.

Every module in this package is imported, and so registered, on first use: adding a suite is adding its
file. Suites kept elsewhere are named in UNLEARN_SUITE_MODULES (comma-separated importable modules).
`unlearn eval --suite NAME`, `unlearn suites`, the studio's Evaluate tab and the report tables are made from
the registry."""
from ...extensions import import_extensions
from .base import SUITES, EvalContext, Need, Suite, get_suite, register_suite

__all__ = ["SUITES", "EvalContext", "Need", "Suite", "get_suite", "register_suite"]
INFRASTRUCTURE = {"base"}
EXTRA_MODULES_VARIABLE = "UNLEARN_SUITE_MODULES"

import_extensions(__name__, __path__, EXTRA_MODULES_VARIABLE, INFRASTRUCTURE)
