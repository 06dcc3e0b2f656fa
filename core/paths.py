"""Paths the user gives, resolved once where they come in and checked before any work: an output folder that
cannot be written is refused with one message up front, not found out by a traceback from mkdir after the
model has loaded; a relative path is made absolute once, so a later subprocess in another folder (llama.cpp's
converter, a studio job) reads the same file."""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from .errors import UnlearnError, require

# Names that are not paths: data specs (`tofu:forget01`, `hf:org/name`) and model names (`bundled`, `demo`).
SPEC_PREFIXES = ("tofu:", "hf:")


def absolute(path: str | Path) -> Path:
    """`path` with `~` expanded, made absolute against the current folder (symlinks are kept)."""
    return Path(os.path.abspath(Path(path).expanduser()))


def absolute_spec(spec: str) -> str:
    """A data or model argument: a path becomes absolute; a `tofu:` / `hf:` spec or a name that is not an
    existing path (`bundled`, a hub id) stays as given."""
    if not spec or spec.startswith(SPEC_PREFIXES) or not Path(spec).expanduser().exists():
        return spec
    return str(absolute(spec))


def input_arg(text: str) -> str:
    """An argparse `type` for a run, model, data or log argument: made absolute once, where it comes in."""
    return absolute_spec(text)


def output_folder_arg(flag: str = "--out"):
    """An argparse `type` for an output folder: absolute, and refused at once (before any model loads) when
    it cannot be made or written."""
    def convert(text: str) -> str:
        return str(writable_folder(text, flag))
    return convert


def writable_folder(path: str | Path, flag: str = "--out") -> Path:
    """The absolute folder `path`, after checking that it can be created (or is a folder) and written in."""
    target = absolute(path)
    require(not target.exists() or target.is_dir(), f"{flag} {path} is a file, not a folder",
            f"choose a folder for {flag}, e.g. {target.with_suffix('')}-out")
    existing = _nearest_existing(target)
    require(existing.is_dir(), f"{flag} {path} cannot be made: {existing} is a file, not a folder",
            f"choose a {flag} folder that is not inside a file")
    try:   # a real try is the only answer that covers permissions, read-only mounts and /proc alike
        os.rmdir(tempfile.mkdtemp(prefix=".unlearn-write-check-", dir=existing))
    except OSError as exc:
        raise UnlearnError(f"{flag} {path} cannot be written: {_reason(exc, existing)}",
                           f"choose a {flag} folder you can write to, e.g. one under {Path.cwd()}") from None
    return target


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _reason(exc: OSError, folder: Path) -> str:
    if exc.errno == errno.EROFS:
        return f"{folder} is on a read-only file system"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to create anything in {folder}"
    return f"{folder} does not accept new folders ({exc.strerror})"
