"""Training jobs started from the studio: a subprocess per run (`python -m core.cli train --config ...`,
never a shell), so a closed or reloaded browser tab loses nothing. The page follows a run by polling its
run directory. One training job at a time per studio: a second request is refused with a clear message.
Ctrl-C on the studio reaches the job too (same process group): it stops at a step boundary with a
checkpoint, resumable later."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from core.config import UnlearnConfig
from core.errors import require
from core.runs import ENDED_STATES, RESUMABLE_STATES, RunDir

EXIT_GRACE_SECONDS = 20   # a run that wrote "stopped" is saving and exiting; don't call it busy


@dataclass
class Job:
    run_key: str
    run_dir: Path
    process: subprocess.Popen

    def alive(self) -> bool:
        return self.process.poll() is None


class JobManager:
    def __init__(self):
        self._lock = threading.Lock()
        self.current: Job | None = None
        self.audit: Job | None = None     # one audit at a time too, beside training

    def start_audit(self, run: RunDir, run_key: str, args: list[str], log_path: Path) -> Job:
        """`unlearn audit RUN --out RUN/audit ARGS` in a subprocess; the page follows RUN/audit/status.json."""
        with self._lock:
            running = self.audit if self.audit and self.audit.alive() else None
            require(running is None, f"an audit is already running here ({Path(running.run_key).name if running else ''})",
                    "wait for it to finish, or stop it, then start again")
            log_path.parent.mkdir(parents=True, exist_ok=True)
            out = run.audit_dir   # export carries it into the bundle
            command = [sys.executable, "-m", "unlearn", "audit", str(run.path), "--out", str(out),
                       "--nice", str(TRAINING_NICENESS), *args]
            log = open(log_path, "ab")
            self.audit = Job(run_key, out, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                            stdin=subprocess.DEVNULL))
            return self.audit

    def stop_audit(self) -> bool:
        """SIGTERM to the running audit: it records "stopped" and writes no half report."""
        job = self.audit
        if job is None or not job.alive():
            return False
        job.process.terminate()
        return True

    def busy(self) -> Job | None:
        with self._lock:
            return self._running()

    def _running(self) -> Job | None:
        """The job still training; one that already wrote a final state gets a moment to exit."""
        job = self.current
        if job is None or not job.alive():
            return None
        if RunDir(job.run_dir).status().get("state") in ENDED_STATES:
            try:
                job.process.wait(EXIT_GRACE_SECONDS)
                return None
            except subprocess.TimeoutExpired:
                pass
        return job

    def start(self, config: UnlearnConfig, run_key: str, log_path: Path) -> Job:
        """Validate, then launch. Validation errors surface here, before any process starts."""
        config.resolved()  # raises UnlearnError for nonsense settings, in the page, right away
        with self._lock:
            running = self._running()
            require(running is None,
                    f"a run is already training here ({Path(running.run_key).name if running else ''})",
                    "wait for it to finish, or stop it, then start again")
            request = log_path.parent / f"{Path(config.out).name}.request.json"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            request.write_text(json.dumps(config.to_dict()))
            self.current = Job(run_key, Path(config.out), _launch_training(["--config", str(request)], log_path))
            return self.current

    def resume(self, run: RunDir, run_key: str, log_path: Path) -> Job:
        with self._lock:
            require(self._running() is None, "a run is already training here", "wait for it or stop it first")
            require(run.status().get("state") in RESUMABLE_STATES,
                    f"this run is {run.status().get('state')}, not stopped", "only a stopped run can resume")
            self.current = Job(run_key, run.path, _launch_training(["--out", str(run.path), "--resume"], log_path))
            return self.current

    def stop(self, run: RunDir) -> None:
        """Ask the run to stop after its current step (works for CLI runs too: it is a file)."""
        run.request_stop()

    def wait(self, timeout: float | None = None) -> None:
        job = self.current
        if job:
            job.process.wait(timeout)


# Training yields the CPU to the studio's own server, so the page stays responsive on a busy laptop.
TRAINING_NICENESS = 10


def _launch_training(args: list[str], log_path: Path) -> subprocess.Popen:
    """`unlearn train ARGS` in a subprocess at lower CPU priority, its output appended to `log_path`."""
    log = open(log_path, "ab")
    command = [sys.executable, "-m", "core.cli", "train", "--nice", str(TRAINING_NICENESS), *args]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
