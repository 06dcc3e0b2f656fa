"""Export formats, one module each, found by name: adding a format is adding its file (here, or anywhere
importable and named in UNLEARN_FORMAT_MODULES, comma-separated). Importing this package loads no runtime:
each format module imports torch, llama.cpp or onnxruntime only when it writes or runs an artifact."""
from core.extensions import import_extensions

from .base import (FORMATS, IDENTICAL, ExportFormat, Variants, WriteJob, chat_command, format_names, format_of,
                   formats, get_format, pick_formats, register_format)

__all__ = ["FORMATS", "IDENTICAL", "ExportFormat", "Variants", "WriteJob", "chat_command", "format_names",
           "format_of", "formats", "get_format", "pick_formats", "register_format"]
EXTRA_MODULES_VARIABLE = "UNLEARN_FORMAT_MODULES"


import_extensions(__name__, __path__, EXTRA_MODULES_VARIABLE, {"base"})
