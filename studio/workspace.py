"""Where the studio keeps files, and who may see them.

root/                           the runs folder (`unlearn studio --runs-dir`, default runs/)
  <name>/ ...                   runs made with the CLI: visible in shared (desktop) mode
  studio/<session>/uploads/     one browser session's uploaded and pasted data
  studio/<session>/runs/<name>/ runs started from that session
  studio/<session>/logs/<name>.log

The browser only ever holds a random session id and run *keys* (paths relative to root) that the server
checks against the runs it lists for that session: no file path from the browser is trusted.
"""
from __future__ import annotations

import re
import secrets
import shutil
import time
from pathlib import Path

from core.errors import UnlearnError, require
from core.runs import RunDir

SESSION_ID = re.compile(r"[0-9a-f]{32}")
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}")
DEFAULT_UPLOAD_LIMIT = 20 * 1024 * 1024   # a forget/retain set is text; 20 MB is far beyond a book


def new_session_id() -> str:
    return secrets.token_hex(16)


class Workspace:
    def __init__(self, root: str | Path, shared: bool = True, upload_limit: int = DEFAULT_UPLOAD_LIMIT):
        self.root = Path(root).resolve()
        self.shared = shared          # desktop: every run under root is listed; Space: only your own
        self.upload_limit = upload_limit
        self.root.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------- sessions
    def session(self, session_id: str | None) -> str:
        """A valid session id: the browser's if well-formed, else a fresh one."""
        if session_id and SESSION_ID.fullmatch(session_id):
            return session_id
        return new_session_id()

    def session_dir(self, session_id: str) -> Path:
        # an empty id means a click arrived before the page's load event gave this tab its session
        require(bool(session_id), "the page is still loading", "wait a moment and try again")
        require(SESSION_ID.fullmatch(session_id) is not None, "invalid session", "reload the page")
        return self.root / "studio" / session_id

    # ---------------------------------------------------------- uploads
    def save_upload(self, session_id: str, role: str, uploaded: str | Path, original_name: str) -> Path:
        """Copy a file Gradio received into the session's uploads, after checking its size and type."""
        source = Path(uploaded)
        suffix = Path(original_name).suffix.lower()
        require(suffix in (".txt", ".jsonl", ".json", ".csv"), f"'{original_name}' is not a supported file type",
                "upload a .txt, .jsonl, .json or .csv file")
        size = source.stat().st_size
        require(size <= self.upload_limit,
                f"'{original_name}' is {size / 1e6:.1f} MB, over the {self.upload_limit / 1e6:.0f} MB upload limit",
                "split it or keep the examples you need to forget")
        target = self._upload_path(session_id, role, suffix)
        shutil.copyfile(source, target)
        return target

    def save_pasted(self, session_id: str, role: str, text: str) -> Path:
        encoded = text.encode("utf-8")
        require(len(encoded) <= self.upload_limit, "the pasted text is over the upload limit", "paste less")
        target = self._upload_path(session_id, role, _pasted_suffix(text))
        target.write_bytes(encoded)
        return target

    def _upload_path(self, session_id: str, role: str, suffix: str) -> Path:
        require(role in ("forget", "retain", "normal"), f"unknown data role {role!r}")
        folder = self.session_dir(session_id) / "uploads"
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob(f"{role}.*"):
            old.unlink()
        return folder / f"{role}{suffix}"

    # ---------------------------------------------------------- runs
    def new_run_dir(self, session_id: str, name: str) -> tuple[str, Path]:
        require(RUN_NAME.fullmatch(name or "") is not None, f"'{name}' is not a usable run name",
                "use letters, digits, '.', '_' or '-' (no spaces or slashes)")
        path = self.session_dir(session_id) / "runs" / name
        require(not path.exists(), f"a run named '{name}' already exists", "choose another run name")
        path.parent.mkdir(parents=True, exist_ok=True)
        return self.key(path), path

    def log_path(self, run_key: str) -> Path:
        path = self.root / run_key
        return path.parent.parent / "logs" / f"{path.name}.log" if path.parent.name == "runs" else path / "train.log"

    def key(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()

    def visible_runs(self, session_id: str) -> list[str]:
        """Run keys this session may open, newest first."""
        own = self.session_dir(session_id) / "runs"
        # a run started here is listed from its first status line, before its config exists
        found = [p for p in own.glob("*") if RunDir(p).has_started()] if own.is_dir() else []
        if self.shared:
            found += [p for p in self.root.glob("*") if RunDir(p).holds_run()]
            found += [p for p in self.root.glob("*/*") if "studio" not in p.parts and RunDir(p).holds_run()]
        unique = {p.resolve(): p for p in found}
        ordered = sorted(unique, key=lambda p: p.stat().st_mtime, reverse=True)
        return [self.key(p) for p in ordered]

    def open_run(self, session_id: str, run_key: str) -> RunDir:
        """The run behind a key, if this session may see it (its own, shared mode, or a share code)."""
        require(bool(run_key), "no run is selected", "start a run or pick one in the Runs tab")
        if run_key in self.visible_runs(session_id) or self._is_share_code(run_key):
            return RunDir(self.root / run_key)
        raise UnlearnError(f"run '{run_key}' is not available to this session",
                           "pick one of your runs, or paste the run's share code in the Runs tab")

    def _is_share_code(self, run_key: str) -> bool:
        parts = run_key.split("/")
        return (len(parts) == 4 and parts[0] == "studio" and SESSION_ID.fullmatch(parts[1]) is not None
                and parts[2] == "runs" and RUN_NAME.fullmatch(parts[3]) is not None
                and RunDir(self.root / run_key).holds_run())


def _pasted_suffix(text: str) -> str:
    """Pasted JSON Lines stay JSON Lines; anything else is passages separated by blank lines."""
    first = text.lstrip()[:1]
    return ".jsonl" if first == "{" else ".json" if first == "[" else ".txt"


def default_run_name(method: str) -> str:
    return f"{method}-{time.strftime('%m%d-%H%M%S')}"
