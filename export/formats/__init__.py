"""Export formats, one module each, found by name: adding a format is adding its file (here, or anywhere
importable and named in UNLEARN_FORMAT_MODULES, comma-separated). Importing this package loads no runtime:
each format module imports torch, llama.cpp or onnxruntime only when it writes or runs an artifact."""
import importlib
import os
import pkgutil

from .base import (FORMATS, IDENTICAL, ExportFormat, Variants, WriteJob, chat_command, format_names, format_of,
                   formats, get_format, pick_formats, register_format)

__all__ = ["FORMATS", "IDENTICAL", "ExportFormat", "Variants", "WriteJob", "chat_command", "format_names",
           "format_of", "formats", "get_format", "pick_formats", "register_format"]
EXTRA_MODULES_VARIABLE = "UNLEARN_FORMAT_MODULES"


def _import_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")
    for name in filter(None, (n.strip() for n in os.environ.get(EXTRA_MODULES_VARIABLE, "").split(","))):
        importlib.import_module(name)


_import_all()
