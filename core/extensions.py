"""Registries filled by importing modules: every module of a package (a method, suite, attack or export
format per file) plus the modules named in an environment variable, for ones kept outside the repository."""
from __future__ import annotations

import importlib
import os
import pkgutil


def import_extensions(package: str, path, variable: str, skip: set[str] = frozenset()) -> None:
    """Import every module of `package` (found on `path`, its __path__) but those in `skip`, then every
    importable module named in the environment variable `variable` (comma-separated); each registers itself."""
    for module in pkgutil.iter_modules(path):
        if module.name not in skip:
            importlib.import_module(f"{package}.{module.name}")
    for name in filter(None, (n.strip() for n in os.environ.get(variable, "").split(","))):
        importlib.import_module(name)
