"""Audit attacks, one module each, found by name; `get_attack(name)` finds them.

Every module in this package is imported, and so registered, on first use: adding an attack is adding its
file. Attacks kept elsewhere are named in UNLEARN_ATTACK_MODULES (comma-separated importable modules).
`unlearn audit`'s --attacks and option flags, the studio's Audit tab and the default list are made from the
registry."""
import importlib
import os
import pkgutil

from .base import (ATTACKS, Attack, AuditContext, attack_names, declared_options, default_attacks, get_attack,
                   register_attack, resolve_options)

__all__ = ["ATTACKS", "Attack", "AuditContext", "attack_names", "declared_options", "default_attacks", "get_attack",
           "register_attack", "resolve_options"]
INFRASTRUCTURE = {"base", "finetune"}    # what the attacks share, not attacks themselves
EXTRA_MODULES_VARIABLE = "UNLEARN_ATTACK_MODULES"


def _import_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name not in INFRASTRUCTURE:
            importlib.import_module(f"{__name__}.{module.name}")
    for name in filter(None, (n.strip() for n in os.environ.get(EXTRA_MODULES_VARIABLE, "").split(","))):
        importlib.import_module(name)


_import_all()
