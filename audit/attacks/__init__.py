"""Audit attacks, one module each, found by name (adding one is adding its file)."""
import importlib
import pkgutil

from .base import ATTACKS, Attack, AuditContext, get_attack, register_attack

__all__ = ["ATTACKS", "Attack", "AuditContext", "get_attack", "register_attack"]

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
