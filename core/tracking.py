"""Experiment tracking (`--report-to tensorboard,trackio,wandb,mlflow`) through accelerate's trackers.

Only the glue lives here: which trackers a run asked for (checked before any model loads), where each one
writes — all of them inside RUN/tracking/, offline, so a run stays self-contained — how a resumed run
continues the same tracker run, and `log_figures`, which adds evaluation and audit figures to a finished
run's trackers at its last step. accelerate does the logging itself, on the main process only.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import sys
import uuid
from pathlib import Path

from .errors import require
from .runs import RunDir, read_json, write_json_atomic

# tracker name -> (the module it imports, the package that provides it)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "trackio": ("trackio", "trackio"),
            "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow-skinny")}
NONE = "none"
PROJECT = "unlearning-studio"   # the W&B / Trackio project and MLflow experiment every run reports to


def tracker_names(report_to: str | None) -> list[str]:
    """'tensorboard,wandb' -> ['tensorboard', 'wandb']; 'none' or '' -> []. An unknown name, or a tracker
    whose package is not installed, is an UnlearnError with the fix."""
    names = [n.strip().lower() for n in (report_to or "").split(",") if n.strip() and n.strip().lower() != NONE]
    unknown = [n for n in names if n not in TRACKERS]
    require(not unknown, f"unknown tracker {', '.join(map(repr, unknown))} in --report-to",
            f"use a comma-separated list of {', '.join(TRACKERS)}, or {NONE}")
    missing = [n for n in names if importlib.util.find_spec(TRACKERS[n][0]) is None]
    require(not missing, f"--report-to {','.join(missing)}: not installed here",
            f"pip install {' '.join(TRACKERS[n][1] for n in missing)} (or all four: pip install -e '.[track]'), "
            f"or leave {','.join(missing)} out of --report-to")
    return list(dict.fromkeys(names))


def accelerator_options(report_to: str | None, run_dir) -> dict:
    """Accelerator(...) keyword arguments that make it log to the run's trackers (none: {})."""
    names = tracker_names(report_to)
    if not names:
        return {}
    from accelerate.utils import ProjectConfiguration

    folder = RunDir(run_dir).tracking_dir
    return {"log_with": names,
            "project_config": ProjectConfiguration(project_dir=str(folder), logging_dir=str(folder / "tensorboard"))}


def start_tracking(accelerator, run_dir, step: int, resuming: bool, config: dict | None = None) -> None:
    """init_trackers for a run: every store inside RUN/tracking, the same tracker run as before when the
    run was reported before (W&B id, Trackio run name, MLflow run id in RUN/tracking/ids.json), `config`
    (flattened) as the hyper-parameters. `resuming`: continue training from `step`, so TensorBoard drops the
    events a stopped process logged after it."""
    if not accelerator.log_with or not accelerator.is_main_process:
        return
    run = RunDir(run_dir)
    folder = run.tracking_dir
    ids = read_json(run.tracking_ids_path) or {"name": run.path.name, "wandb_id": uuid.uuid4().hex[:12]}
    _stores_into(folder, [str(name) for name in accelerator.log_with])
    options = {"tensorboard": {"purge_step": step + 1} if resuming else {},
               "wandb": {"dir": str(folder), "mode": "offline", "name": ids["name"], "id": ids["wandb_id"],
                         "resume": "allow"},
               "trackio": {"name": ids["name"], "resume": "allow", "embed": False},
               "mlflow": {"run_name": ids["name"], "run_id": ids.get("mlflow_run_id")}}
    accelerator.init_trackers(PROJECT, config=hyperparameters(config) if config else None, init_kwargs=options)
    for tracker in accelerator.trackers:
        if tracker.name == "mlflow":
            ids["mlflow_run_id"] = tracker.tracker.info.run_id
    write_json_atomic(run.tracking_ids_path, ids)


def _stores_into(folder: Path, names: list[str]) -> None:
    """Trackio's and MLflow's stores inside `folder` (the other two take a directory as an argument)."""
    if "trackio" in names:
        store = folder / "trackio"
        os.environ["TRACKIO_DIR"] = str(store)
        # trackio reads TRACKIO_DIR once, on import, into module constants: a second run in this process
        # (the Python API) must re-point them, or it would write into the first run's folder.
        for name, module in list(sys.modules.items()):
            if name.split(".")[0] == "trackio":
                for constant, path in (("TRACKIO_DIR", store), ("MEDIA_DIR", store / "media"),
                                       ("ARTIFACTS_DIR", store / "artifacts")):
                    if hasattr(module, constant):
                        setattr(module, constant, path)
    if "mlflow" in names:
        import mlflow

        # mlflow-skinny has no SQL store; MLflow 3.x asks for this opt-in to keep using its file store
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        (folder / "mlflow").mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri((folder / "mlflow").resolve().as_uri())


def log_values(accelerator, values: dict, step: int) -> None:
    """The numbers in `values` (nested dicts flattened to a/b/c, strings and lists left out) at `step`."""
    numbers = {key: value for key, value in _flat(values).items()
               if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step"}
    if numbers:
        accelerator.log(numbers, step=step)


def end_tracking(accelerator) -> None:
    """Finish every tracker (W&B and MLflow close their runs, TensorBoard flushes). Not
    accelerator.end_training(): that also destroys the process group, which a second run in the same
    processes (the Python API under accelerate launch) still needs."""
    for tracker in accelerator.trackers:
        if tracker.name == "trackio":
            import trackio

            trackio.finish()   # also forgets the run, which trackio's exit hook would otherwise finish again
        else:
            tracker.finish()
    accelerator.trackers.clear()


def log_figures(run_dir, prefix: str, figures: dict) -> None:
    """Add `figures` (an evaluation's summary, an audit's results), under `prefix`, to the trackers of the
    run they were measured on, at the run's last step (a checkpoint's own step). Nothing when `run_dir` is
    not a run (a model folder, `bundled`) or its run reports to no tracker."""
    run, step = _run_and_step(run_dir)
    if run is None or not tracker_names(run.config().get("report_to")):
        return
    from accelerate import Accelerator

    config = run.config()
    accelerator = Accelerator(**accelerator_options(config["report_to"], run))
    with contextlib.redirect_stdout(sys.stderr):   # the trackers' chatter: stdout stays the command's (--json)
        # the settings again: Trackio keeps, per run, the config its latest session started with
        start_tracking(accelerator, run, step, resuming=False, config=config)
        try:
            log_values(accelerator, {prefix: figures}, step)
        finally:
            end_tracking(accelerator)


def _run_and_step(path) -> tuple[RunDir | None, int]:
    """The run a path names (a run, or one of its checkpoints) and the step its figures belong to."""
    try:
        path = Path(str(path))
    except TypeError:
        return None, 0
    checkpoint_of = RunDir.of_checkpoint(path)
    if checkpoint_of is not None:
        return checkpoint_of, int(path.name.split("-")[1])
    run = RunDir(path)
    if not run.holds_run():
        return None, 0
    steps = [row["step"] for row in run.metrics() if isinstance(row.get("step"), int)]
    return run, run.status().get("step") or max(steps, default=0)


def hyperparameters(config: dict) -> dict:
    """A run's config.json as flat hyper-parameters: nested settings as a/b, lists as JSON text, unset
    (None) ones left out — what every tracker's hyper-parameter table takes."""
    return {key: json.dumps(value) if isinstance(value, (list, tuple)) else value
            for key, value in _flat(config).items() if value is not None}


def _flat(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        name = prefix + _key(str(key))
        if isinstance(value, dict):
            flat.update(_flat(value, name + "/"))
        else:
            flat[name] = value
    return flat


def _key(name: str) -> str:
    """A name every tracker accepts (MLflow allows only letters, digits and _-. :/ in metric and param names)."""
    return re.sub(r"[^\w\-. :/]", "_", name)
