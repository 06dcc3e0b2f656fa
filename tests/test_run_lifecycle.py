"""Runs outside the happy path: started from one folder and used from another, killed without a word,
resumed before their first checkpoint."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import StopAfter, quiet, run_unlearn
from core.config import UnlearnConfig
from core.runs import RunDir
from core.trainer import train


def unlearn(*args, cwd=None, timeout=300):
    return run_unlearn(*args, cwd=cwd, timeout=timeout, env={"PYTHONPATH": str(Path.cwd())})


def test_a_run_started_with_relative_paths_resumes_from_another_folder(tiny_model_dir, qa_files, tmp_path,
                                                                       monkeypatch):
    start, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    start.mkdir(), elsewhere.mkdir()
    (start / "tiny").symlink_to(tiny_model_dir)
    (start / "forget.jsonl").write_text(qa_files["forget"].read_text())
    monkeypatch.chdir(start)
    config = UnlearnConfig(model="tiny", method="npo", forget="forget.jsonl", out="runs/k", max_steps=6,
                           batch_size=4, lr=1e-3, save_steps=1, eval_examples=2, device="cpu", lora=True, lora_r=4)
    assert train(config, stop_event=StopAfter(2), **quiet()).state == "stopped"

    saved = json.loads((start / "runs/k/config.json").read_text())
    assert saved["out"] == str(start / "runs/k") and saved["forget"] == str(start / "forget.jsonl")
    assert saved["resolved_model"]["path"] == str(start / "tiny")
    assert saved["as_given"] == {"model": "tiny", "forget": "forget.jsonl", "out": "runs/k"}
    assert not (start / "runs/k/model").exists()   # stopped: no final model yet

    monkeypatch.chdir(elsewhere)
    result = train(UnlearnConfig(out=str(start / "runs/k"), resume=True), **quiet())
    assert result.state == "finished" and result.step == 6
    adapter = json.loads((start / "runs/k/model/adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(start / "tiny")

    # llama.cpp's converter runs in a folder of its own: the run's base must be found from there too
    exported = unlearn("export", start / "runs/k", "--formats", "gguf", "--gguf-quant", "q8_0",
                       "--out", elsewhere / "bundle", cwd=elsewhere, timeout=600)
    assert exported.returncode == 0, exported.stderr
    assert list((elsewhere / "bundle").rglob("*.gguf"))


def test_a_sigkilled_run_is_interrupted_and_resumes_with_one_line_per_step(tiny_model_dir, qa_files, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", tiny_model_dir, "--method", "npo_rt", "--forget", qa_files["forget"],
            "--retain", qa_files["retain"], "--out", out, "--max-steps", 60, "--save-steps", 1000,
            "--lr", 1e-4, "--device", "cpu", "--eval-examples", 2]
    process = subprocess.Popen([sys.executable, "-m", "core.cli", *map(str, args)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = RunDir(out)
    deadline = time.time() + 120
    while time.time() < deadline and json.loads(run.status_path.read_text() if run.status_path.is_file()
                                                else "{}").get("step", 0) < 5:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    killed_at = max(row["step"] for row in run.metrics())
    assert killed_at >= 5 and run.latest_checkpoint() is None

    status = unlearn("status", out, "--json")
    assert status.returncode == 0, status.stderr
    reported = json.loads(status.stdout)
    assert reported["state"] == "interrupted" and f"unlearn train --out {out} --resume" in reported["message"]
    assert json.loads(run.status_path.read_text())["state"] == "interrupted"   # recorded for every reader

    result = train(UnlearnConfig(out=str(out), resume=True), **quiet())
    assert result.state == "finished" and result.steps_run == 60   # no checkpoint: it started again from 0
    assert [row["step"] for row in run.metrics()] == list(range(1, 61))


def test_a_reused_pid_does_not_keep_a_dead_run_running(tmp_path):
    run = RunDir.prepare(tmp_path / "run")
    run.write_config({"method": "npo"})
    run.write_status("running", pid=os.getpid(), step=3)
    assert run.status()["state"] == "running" and run.is_active()
    status = json.loads(run.status_path.read_text())
    status["pid_started"] -= 3600   # the recorded trainer started an hour before this process
    run.status_path.write_text(json.dumps(status))
    assert run.status()["state"] == "interrupted" and not run.is_active()


def test_a_run_written_before_the_parameter_specs_resumes_evaluates_and_exports(tiny_config, tmp_path):
    """config.json used to hold every method's hyper-parameters at the top level, and ga_kl's KL weight was
    called retain_weight. A stopped run of that layout resumes, then evaluates and exports."""
    from dataclasses import replace

    from core.cli import main
    from export.bundle import export_run

    config = replace(tiny_config, method="ga_kl", max_steps=4, save_steps=1, lora=True, lora_r=4, lr=1e-2,
                     method_params={"kl_weight": 0.5})
    assert train(config, stop_event=StopAfter(2), **quiet()).state == "stopped"
    run = RunDir(config.out)
    saved = run.config()
    params = saved.pop("method_params")
    legacy = {**saved, "beta": None, "delta": None, "forget_weight": None, "retain_weight": params["kl_weight"],
              "mismatch_weight": None, "mismatch_k": None, "max_forget_loss": None,
              "method_params": {"forget_weight": params["forget_weight"], "retain_weight": params["kl_weight"]}}
    (run.path / "config.json").write_text(json.dumps(legacy))
    resumed_from = int(run.latest_checkpoint().name.split("-")[1])
    result = train(UnlearnConfig(out=config.out, resume=True), **quiet())
    assert result.state == "finished" and result.step == 4 and result.steps_run == 4 - resumed_from > 0
    assert [row["step"] for row in run.metrics()] == [1, 2, 3, 4]
    assert main(["eval", config.out, "--suite", "quick", "--out", str(tmp_path / "eval"), "--max-samples", "2",
                 "--max-new-tokens", "2", "--device", "cpu"]) == 0
    manifest = export_run(config.out, tmp_path / "bundle", formats=("hf",), parity_examples=1, log=lambda m: None)
    assert "hf" in manifest["artifacts"]


def test_atomically_written_files_get_the_usual_permissions_not_the_temporary_files(tmp_path):
    """mkstemp makes its file 0600: renamed into place, summaries and audits were unreadable to anyone but
    their owner (a web server serving a bundle, a teammate on a shared disk)."""
    from core.runs import write_json_atomic

    mask = os.umask(0o022)
    os.umask(mask)
    plain, atomic = tmp_path / "plain.json", tmp_path / "atomic.json"
    plain.write_text("{}")
    write_json_atomic(atomic, {})
    assert atomic.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_runs_folders_and_weights_get_the_usual_permissions(tiny_config, tmp_path):
    """Checkpoints and the model are staged in a mkdtemp folder (0700) and renamed into place, and
    safetensors 0.8 writes its files 0600: the weights were readable by their owner only."""
    from dataclasses import replace

    mask = os.umask(0o022)
    os.umask(mask)
    config = replace(tiny_config, out=str(tmp_path / "run"), max_steps=2, save_steps=1)
    train(config, **quiet())
    run = tmp_path / "run"
    checkpoints = sorted((run / "checkpoints").iterdir())
    assert checkpoints and all(c.stat().st_mode & 0o777 == 0o777 & ~mask for c in checkpoints)
    weights = sorted(run.rglob("*.safetensors"))
    assert {w.parent.name for w in weights} >= {"model", checkpoints[-1].name}
    assert {w.relative_to(run).as_posix(): oct(w.stat().st_mode & 0o777) for w in weights} == {
        w.relative_to(run).as_posix(): oct(0o666 & ~mask) for w in weights}


def test_a_start_that_failed_before_its_run_existed_does_not_block_the_same_out_again(tmp_path):
    """A start refused (e.g. no retain set) leaves its failed status for the studio; the corrected command with
    the same --out must then work, while a folder holding anything else is still refused."""
    import pytest

    from core.errors import UnlearnError
    from core.runs import RunDir

    failed = RunDir(tmp_path / "run")
    failed.path.mkdir()
    failed.write_status("failed", error="method npo_rt needs a retain set")
    assert RunDir.prepare(failed.path).path.is_dir()
    (failed.path / "notes.txt").write_text("mine")
    with pytest.raises(UnlearnError, match="not an empty directory or a run"):
        RunDir.prepare(failed.path)
