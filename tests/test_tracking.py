"""--report-to: one tiny run reports to TensorBoard, Trackio, W&B (offline) and MLflow at once, and each
tracker's own store, inside the run folder, is read back with the tracker's own reader and set against
metrics.jsonl; `unlearn eval` adds its figures; a resumed run continues the same tracker runs; a wrong or
missing tracker is one error line."""
import json
import re
import struct
from dataclasses import replace

import pytest

from conftest import StopAfter, quiet, train_tiny_run
from core import tracking
from core.cli import main
from core.config import UnlearnConfig
from core.errors import UnlearnError
from core.runs import RunDir
from core.trainer import train

ALL = "tensorboard,trackio,wandb,mlflow"
FEW = ["--max-samples", "4", "--max-new-tokens", "2", "--batch-size", "4", "--device", "cpu"]
EVAL_FAST = ["--suite", "quick", *FEW]


@pytest.fixture(scope="module")
def reported(tmp_path_factory, tiny_model_dir):
    """A finished 3-step run reporting to all four trackers, then evaluated with `unlearn eval` and audited
    with `unlearn audit` (the rephrasing attack: it trains nothing)."""
    from unlearn.cli import main as unlearn

    root = tmp_path_factory.mktemp("tracked")
    config = train_tiny_run(root, tiny_model_dir, report_to=ALL)
    assert main(["eval", config.out, "--out", str(root / "eval"), *EVAL_FAST]) == 0
    assert unlearn(["audit", config.out, "--out", str(root / "audit"), "--attacks", "rephrase", *FEW]) == 0
    return RunDir(config.out), json.loads((root / "eval" / "summary.json").read_text()), \
        json.loads((root / "audit" / "audit.json").read_text())


def logged(run: RunDir, key: str) -> list[tuple[int, float]]:
    return [(row["step"], row[key]) for row in run.metrics() if row.get(key) is not None]


def tensorboard_scalars(run: RunDir, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run.tracking_dir / "tensorboard" / tracking.PROJECT))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def mlflow_run(run: RunDir):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=(run.tracking_dir / "mlflow").resolve().as_uri())
    experiment = client.get_experiment_by_name(tracking.PROJECT)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1   # a resume or an evaluation continues the run, never starts another
    return client, runs[0]


def close(pairs, expected):
    return [s for s, _ in pairs] == [s for s, _ in expected] and \
        all(v == pytest.approx(w, rel=1e-5) for (_, v), (_, w) in zip(pairs, expected))


def test_tensorboard_event_files_hold_the_metrics_lines(reported):
    run, *_ = reported
    for key in ("loss", "forget_nll", "retain_nll", "lr", "tokens_per_second"):
        assert close(tensorboard_scalars(run, key), logged(run, key)), key
    assert tensorboard_scalars(run, "summary/after/forget_nll") == \
        [(3, pytest.approx(json.loads(run.summary_path.read_text())["after"]["forget_nll"], rel=1e-5))]
    hparams = list((run.tracking_dir / "tensorboard").rglob("hparams.yml"))
    assert hparams and "method: npo_rt" in hparams[0].read_text()


def test_trackio_local_store_is_in_the_run_and_holds_the_metrics(reported):
    from trackio.sqlite_storage import SQLiteStorage

    run, *_ = reported
    store = run.tracking_dir / "trackio"
    assert (store / f"{tracking.PROJECT}.db").is_file()
    assert SQLiteStorage.get_project_db_path(tracking.PROJECT) == store / f"{tracking.PROJECT}.db"
    rows = [r for r in SQLiteStorage.get_logs(tracking.PROJECT, run.path.name) if "loss" in r]
    assert close([(r["step"], r["loss"]) for r in rows], logged(run, "loss"))
    assert SQLiteStorage.get_run_config(tracking.PROJECT, run.path.name)["method"] == "npo_rt"


def wandb_records(path):
    """The records of a .wandb file (LevelDB log format: 32 KiB blocks of chunks with a 7-byte header),
    each decoded with wandb's own protobuf Record."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block, position, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        if block - position % block < 7:   # a block's tail too short for a header is padding
            position += block - position % block
            continue
        length, kind = struct.unpack("<HB", data[position + 4:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):   # a whole record, or a record's last chunk
            record = Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def wandb_run_id(folder):
    """offline-run-<date>_<time>-<id>; W&B adds "-1" when a run is taken up again within the same second."""
    return re.fullmatch(r"offline-run-\d{8}_\d{6}-([a-z0-9]+)(-\d+)?", folder.name).group(1)


def test_wandb_offline_run_is_in_the_run_folder_with_its_history(reported):
    run, *_ = reported
    offline = sorted((run.tracking_dir / "wandb").glob("offline-run-*"))
    wandb_id = json.loads(run.tracking_ids_path.read_text())["wandb_id"]
    assert offline and all(wandb_run_id(folder) == wandb_id for folder in offline)
    history, config = [], {}
    for record in wandb_records(offline[0] / f"run-{wandb_id}.wandb"):
        if record.HasField("history"):
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            if "loss" in items:
                history.append((items["_step"], items["loss"]))
        if record.HasField("config"):
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    assert close(history, logged(run, "loss"))
    assert config["method"] == "npo_rt"


def test_mlflow_file_store_holds_metric_history_and_params(reported):
    run, *_ = reported
    client, found = mlflow_run(run)
    history = [(m.step, m.value) for m in client.get_metric_history(found.info.run_id, "forget_nll")]
    assert close(sorted(history), logged(run, "forget_nll"))
    assert found.data.params["method"] == "npo_rt" and float(found.data.params["lr"]) == pytest.approx(1e-3)


def test_eval_figures_reach_the_trackers_at_the_runs_last_step(reported):
    run, summary, _ = reported
    after = summary["after"]["forget"]["nll"]
    assert tensorboard_scalars(run, "eval/quick/after/forget/nll") == [(3, pytest.approx(after, rel=1e-5))]
    client, found = mlflow_run(run)
    assert [(m.step, m.value) for m in client.get_metric_history(found.info.run_id, "eval/quick/after/forget/nll")] \
        == [(3, pytest.approx(after, rel=1e-5))]


def test_audit_recoveries_reach_the_trackers_per_attack(reported):
    run, _, audit = reported
    figures = {f"audit/{r['name']}/recovery/{name}": value for r in audit["results"]
               for name, value in r["recovery"].items() if value is not None}
    assert figures   # the rephrasing attack measures an NLL recovery on this run
    for tag, value in figures.items():
        assert tensorboard_scalars(run, tag) == [(3, pytest.approx(value, rel=1e-5))], tag
    client, found = mlflow_run(run)
    for tag, value in figures.items():
        assert found.data.metrics[tag] == pytest.approx(value)


def test_a_resumed_run_continues_its_tracker_runs_and_steps(tiny_config):
    config = replace(tiny_config, max_steps=4, save_steps=2, report_to="tensorboard,wandb,mlflow")
    assert train(config, **quiet(stop_event=StopAfter(2))).state == "stopped"
    run = RunDir(config.out)
    # as if the process had died after step 3: back to the step-2 checkpoint, which step 3 is redone from
    latest = run.latest_checkpoint()
    assert latest.name.endswith("3")
    import shutil
    shutil.rmtree(latest)
    assert train(replace(config, resume=True), **quiet()).state == "finished"

    assert [s for s, _ in logged(run, "loss")] == [1, 2, 3, 4]
    assert close(tensorboard_scalars(run, "loss"), logged(run, "loss"))   # the first step 3 was purged
    client, found = mlflow_run(run)
    assert [m.step for m in client.get_metric_history(found.info.run_id, "loss")][-2:] == [3, 4]
    offline = list((run.tracking_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and len({wandb_run_id(folder) for folder in offline}) == 1


@pytest.mark.parametrize("report_to, problem", [("tensorbored", "unknown tracker 'tensorbored'"),
                                               ("wandb,comet", "unknown tracker 'comet'")])
def test_an_unknown_tracker_is_one_error_line_before_anything_loads(report_to, problem, qa_files, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--forget", str(qa_files["forget"]), "--out", str(out), "--report-to", report_to]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {problem}") and "fix: use a comma-separated list of tensorboard" in err
    assert "Traceback" not in err and not out.exists()


def test_a_tracker_not_installed_names_its_package(monkeypatch):
    monkeypatch.setitem(tracking.TRACKERS, "mlflow", ("no_such_module_here", "mlflow-skinny"))
    with pytest.raises(UnlearnError) as caught:
        UnlearnConfig(forget="f.jsonl", report_to="tensorboard,mlflow").validate()
    assert caught.value.problem == "--report-to mlflow: not installed here"
    assert "pip install mlflow-skinny" in caught.value.fix
    assert tracking.tracker_names("none") == [] and tracking.tracker_names(" TensorBoard ") == ["tensorboard"]
