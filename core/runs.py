"""The run directory: the one contract between the trainer, the studio, evaluation and export.

Layout and field meanings are documented in docs/run-directory.md. Every JSON file is written
atomically (temporary file + rename), so a reader never sees half a file and a crash loses nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from enum import Enum
from pathlib import Path

from .errors import require
from .paths import writable_folder

class RunState(str, Enum):
    """A run's state in status.json, the one vocabulary of the trainer, the studio and export. A str enum:
    it is written to JSON as its value, and equals the plain string read back."""
    QUEUED = "queued"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"   # the status said running, but its process is gone (SIGKILL, a reboot)
    FINISHED = "finished"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


STATES = tuple(RunState)
ACTIVE_STATES = (RunState.QUEUED, RunState.RUNNING, RunState.STOPPING)
RESUMABLE_STATES = (RunState.STOPPED, RunState.INTERRUPTED, RunState.FAILED)
ENDED_STATES = (RunState.STOPPED, RunState.FINISHED, RunState.FAILED)
STOP_FILE = "STOP"
AUDIT_REPORT = "audit.json"   # what `unlearn audit` writes into its folder (RUN/audit by default)


def _umask() -> int:
    """The process's umask (read once, at import, while nothing else runs: setting it is the only way to
    read it portably)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()
FILE_MODE = 0o666 & ~_UMASK   # what open() would give a new file; mkstemp's own is 0600
DIR_MODE = 0o777 & ~_UMASK    # what mkdir would give a new folder; mkdtemp's own is 0700


def staging_dir(prefix: str, parent: Path) -> Path:
    """A fresh folder beside its final place, to be renamed into it when complete, with the permissions
    mkdir would give it (mkdtemp's own, 0700, would follow the folder into place)."""
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(staging, DIR_MODE)
    return staging


def usual_permissions(path: Path) -> Path:
    """Give `path` (a file, or a folder and all it holds) the permissions the umask gives a new file or
    folder. safetensors 0.8 writes its files 0600 (safetensors/safetensors#782): a model saved here would
    be unreadable to a teammate on a shared disk or to a server running as another user."""
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not item.is_symlink():
            os.chmod(item, DIR_MODE if item.is_dir() else FILE_MODE)
    return path


def replace_with_staged(staging: Path, target: Path) -> None:
    """Put a complete staged folder in `target`'s place (an old one is removed first), with the usual
    permissions."""
    usual_permissions(staging)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename it into place: readers see the old file or the
    new one, never half of one. The file gets the usual permissions, not the temporary file's 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str))


def read_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


ADAPTER_CONFIG = "adapter_config.json"   # in model/: the run trained a LoRA adapter (PEFT layout)
MODEL_CONFIG = "config.json"              # in model/: full weights (Hugging Face layout)


class RunDir:
    """One run directory: every file name in it, every question about it (is it a run, which model did it
    start from, has it a final model, where its audit goes) and small atomic I/O helpers. Every part of
    the product reaches a run through this class; nothing else spells its file names."""

    def __init__(self, path: "str | Path | RunDir"):
        self.path = path.path if isinstance(path, RunDir) else Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------ layout
    config_path = property(lambda self: self.path / "config.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    status_path = property(lambda self: self.path / "status.json")
    summary_path = property(lambda self: self.path / "summary.json")
    reference_path = property(lambda self: self.path / "reference_nll.safetensors")
    checkpoints_dir = property(lambda self: self.path / "checkpoints")
    model_dir = property(lambda self: self.path / "model")
    stop_path = property(lambda self: self.path / STOP_FILE)
    audit_dir = property(lambda self: self.path / "audit")     # `unlearn audit RUN` writes here by default
    audit_report_path = property(lambda self: self.audit_dir / AUDIT_REPORT)
    export_dir = property(lambda self: self.path / "export")   # the studio's bundle of this run
    tracking_dir = property(lambda self: self.path / "tracking")   # --report-to: each tracker's offline store
    tracking_ids_path = property(lambda self: self.tracking_dir / "ids.json")   # the tracker runs it continues

    # ------------------------------------------------ what the folder holds
    def holds_run(self) -> bool:
        """A run's config.json records its method or resolved model; a Hugging Face model folder's
        config.json (which has the same name) records neither."""
        config = read_json(self.config_path)
        return isinstance(config, dict) and ("method" in config or "resolved_model" in config)

    def has_started(self) -> bool:
        """A run, or a start that has written its first status line (before its config exists)."""
        return self.status_path.is_file() or self.holds_run()

    def base_model(self) -> str:
        """The model the run started from, as resolved when it ran (a directory or a hub id), else as the
        user named it ('bundled'): pass it to core.models.resolve_model."""
        config = self.config()
        return (config.get("resolved_model") or {}).get("path") or config.get("model") or "bundled"

    def final_model_kind(self) -> str | None:
        """'adapter' (a LoRA run's PEFT adapter), 'full' (whole weights) or None (not finished)."""
        if (self.model_dir / ADAPTER_CONFIG).is_file():
            return "adapter"
        if (self.model_dir / MODEL_CONFIG).is_file() and any(self.model_dir.glob("*.safetensors")):
            return "full"
        return None

    def has_final_model(self) -> bool:
        return self.final_model_kind() is not None

    @classmethod
    def of_checkpoint(cls, path: str | Path) -> "RunDir | None":
        """The run that `path` is a checkpoint of (RUN/checkpoints/step-N), or None."""
        path = Path(path)
        if path.parent.name != "checkpoints" or not path.name.startswith("step-"):
            return None
        run = cls(path.parent.parent)
        return run if run.holds_run() else None

    # ------------------------------------------------ creation
    @classmethod
    def prepare(cls, path: str | Path, resume: bool = False, overwrite: bool = False,
                create: bool = True) -> "RunDir":
        """Check the directory against the user's intent; with create, clear/create it to match."""
        run = cls(path)
        if not resume:   # before any model loads: a folder that cannot be written fails here, in one line
            writable_folder(run.path, "--out")
        if resume:
            require(run.holds_run(), f"there is no run to resume in {run.path}",
                    "check --out, or start a new run without --resume")
            return run
        if run.holds_run():
            require(overwrite, f"{run.path} already holds a run",
                    "pass --resume to continue it, --overwrite to replace it, or choose another --out")
            require(not run.is_active(), f"the run in {run.path} is still {run.status().get('state')}",
                    "stop it first (unlearn stop DIR), then overwrite")
            if create:
                shutil.rmtree(run.path)
        elif run.path.exists():   # empty, or a start that failed before its run existed (a status, no config)
            require(run.path.is_dir() and {p.name for p in run.path.iterdir()} <= {run.status_path.name},
                    f"{run.path} exists and is not an empty directory or a run",
                    "choose a new --out directory")
        if create:
            run.path.mkdir(parents=True, exist_ok=True)
        return run

    # ------------------------------------------------ config, status, metrics
    def write_config(self, config: dict) -> None:
        write_json_atomic(self.config_path, config)

    def config(self) -> dict:
        return read_json(self.config_path, {})

    def write_status(self, state: str, **fields) -> None:
        assert state in STATES, state
        if "pid" in fields:   # with the host and start time, a reused pid is not mistaken for the trainer
            fields.update(host=socket.gethostname(), pid_started=process_start_time(fields["pid"]))
        write_json_atomic(self.status_path, {"state": state, "updated_at": time.time(), **fields})

    def status(self) -> dict:
        """status.json; a run whose trainer died without a word (SIGKILL, a reboot) is reported, and
        recorded, as interrupted, with the command that resumes it."""
        status = read_json(self.status_path, {"state": RunState.QUEUED})
        if status.get("state") in ACTIVE_STATES and not _writer_alive(status):
            status = {**status, "state": RunState.INTERRUPTED, "interrupted_from": status["state"],
                      "message": f"the training process ({status.get('pid')}) is gone; resume with: "
                                 f"unlearn train --out {self.path.resolve()} --resume"}
            try:
                write_json_atomic(self.status_path, status)
            except OSError:   # a read-only copy of a run still reads as interrupted
                pass
        return status

    def is_active(self) -> bool:
        """Running or about to: its status says so and the process that wrote it is alive."""
        return self.status().get("state") in ACTIVE_STATES

    def append_metrics(self, line: dict) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
            handle.flush()

    def metrics(self) -> list[dict]:
        """Parsed metrics lines; a line still being written is skipped, not an error."""
        if not self.metrics_path.is_file():
            return []
        rows = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return rows

    def truncate_metrics(self, after_step: int) -> None:
        """On resume, drop lines logged after the checkpoint we go back to (they will be redone)."""
        kept = [row for row in self.metrics() if row.get("step", 0) <= after_step]
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
        os.replace(tmp, self.metrics_path)

    # ------------------------------------------------ stopping
    def request_stop(self) -> None:
        """Ask a running trainer (any process) to stop at its next step boundary."""
        self.stop_path.write_text(str(time.time()))

    def stop_requested(self) -> bool:
        return self.stop_path.exists()

    def clear_stop(self) -> None:
        self.stop_path.unlink(missing_ok=True)

    # ------------------------------------------------ checkpoints
    def checkpoints(self) -> list[Path]:
        if not self.checkpoints_dir.is_dir():
            return []
        found = [p for p in self.checkpoints_dir.glob("step-*") if p.is_dir()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None


def process_start_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(int(pid)).create_time()
    except (psutil.Error, ValueError):
        return None


def _writer_alive(status: dict) -> bool:
    """Is the process that wrote `status` still running? Only this machine's processes can be checked:
    a run written on another host (a shared disk) is taken at its word."""
    pid = status.get("pid")
    if pid is None or status.get("host", socket.gethostname()) != socket.gethostname():
        return True
    started = process_start_time(pid)
    if started is None:
        return False
    recorded = status.get("pid_started")
    return recorded is None or abs(started - recorded) < 1.0
