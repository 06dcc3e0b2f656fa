"""Audit attacks, one module each, found by name; `get_attack(name)` finds them.

Every module in this package is imported, and so registered, on first use: adding an attack is adding its
file. Attacks kept elsewhere are named in UNLEARN_ATTACK_MODULES (comma-separated importable modules).
`unlearn audit`'s --attacks and option flags, the studio's Audit tab and the default list are made from the
registry."""
from core.extensions import import_extensions

from .base import (ATTACKS, Attack, AuditContext, attack_names, declared_options, default_attacks, get_attack,
                   register_attack, resolve_options)

__all__ = ["ATTACKS", "Attack", "AuditContext", "attack_names", "declared_options", "default_attacks", "get_attack",
           "register_attack", "resolve_options"]
INFRASTRUCTURE = {"base", "finetune"}    # what the attacks share, not attacks themselves
EXTRA_MODULES_VARIABLE = "UNLEARN_ATTACK_MODULES"

import_extensions(__name__, __path__, EXTRA_MODULES_VARIABLE, INFRASTRUCTURE)
