"""The `unlearn` command end to end, in a real subprocess: training, config files, stop, and errors
that print one message with its fix and no traceback."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import run_unlearn as unlearn
from core.runs import RunDir


def assert_clean_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and "fix:" in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def test_train_end_to_end_prints_a_summary(tiny_model_dir, qa_files, tmp_path):
    out = tmp_path / "run"
    result = unlearn("train", "--model", tiny_model_dir, "--method", "npo_rt", "--forget", qa_files["forget"],
                     "--retain", qa_files["retain"], "--out", out, "--max-steps", 3, "--lr", 1e-3, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "Unlearning finished: 3 steps" in result.stdout
    assert "forget NLL" in result.stdout and "retain NLL" in result.stdout and str(out / "model") in result.stdout
    assert "forget: 8 examples" in result.stdout
    assert RunDir(out).status()["state"] == "finished"


def test_config_file_with_flag_override(tiny_model_dir, qa_files, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {tiny_model_dir}\nmethod: npo\nforget: {qa_files['forget']}\n"
                      f"max_steps: 5\nbeta: 0.3\ndevice: cpu\nlr: 0.001\n")
    out = tmp_path / "run"
    result = unlearn("train", "--config", config, "--max-steps", 2, "--out", out)
    assert result.returncode == 0, result.stderr
    saved = json.loads((out / "config.json").read_text())
    assert (saved["method"], saved["max_steps"], saved["method_params"]["beta"]) == ("npo", 2, 0.3)


def test_ctrl_c_stops_with_a_checkpoint_and_resume_finishes(tiny_model_dir, qa_files, tmp_path):
    import signal
    import time

    out = tmp_path / "run"
    common = ["--model", tiny_model_dir, "--forget", qa_files["forget"], "--retain", qa_files["retain"],
              "--out", out, "--lr", 1e-3, "--device", "cpu", "--max-steps", 40]
    process = subprocess.Popen([sys.executable, "-m", "core.cli", "train", *map(str, common)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and RunDir(out).status().get("step", 0) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "Stopped at step" in stdout and "--resume" in stdout
    stopped_at = RunDir(out).status()["step"]
    assert RunDir(out).status()["state"] == "stopped" and stopped_at < 40
    assert RunDir(out).latest_checkpoint().name == f"step-{stopped_at:06d}"

    again = unlearn("train", "--out", out, "--resume")
    assert again.returncode == 0, again.stderr
    assert f"resumed from step-{stopped_at:06d}" in again.stdout and "Unlearning finished: 40 steps" in again.stdout
    assert [row["step"] for row in RunDir(out).metrics()] == list(range(1, 41))

    assert_clean_error(unlearn("train", "--out", out, "--resume"), "already finished")
    assert_clean_error(unlearn("train", *common), "already holds a run", "--resume", "--overwrite")


@pytest.mark.parametrize("args,fragments", [
    (["--method", "nope"], ["unknown method 'nope'", "npo_rt"]),
    (["--beta", "0"], ["beta must be > 0"]),
    (["--lr", "-1"], ["learning rate must be positive"]),
    (["--batch-size", "0"], ["batch_size must be at least 1"]),
    pytest.param(["--device", "cuda"], ["CUDA"], marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="checks the message on a machine without CUDA")),
    (["--forget", "missing.jsonl"], ["does not exist"]),
])
def test_bad_input_gives_one_message_and_no_traceback(tiny_model_dir, qa_files, tmp_path, args, fragments):
    base = ["--model", tiny_model_dir, "--forget", qa_files["forget"], "--retain", qa_files["retain"],
            "--out", tmp_path / "run", "--max-steps", 1]
    assert_clean_error(unlearn("train", *base, *args), *fragments)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_not_a_model_and_binary_forget_file(tmp_path, qa_files):
    binary = tmp_path / "forget.txt"
    binary.write_bytes(bytes(range(256)))
    assert_clean_error(unlearn("train", "--forget", binary, "--out", tmp_path / "a"), "is binary")
    assert_clean_error(unlearn("train", "--model", tmp_path, "--forget", qa_files["forget"], "--retain",
                               qa_files["retain"], "--out", tmp_path / "b"), "not a Hugging Face model directory")


def test_methods_lists_every_method_with_its_source():
    result = unlearn("methods")
    assert result.returncode == 0
    for name in ("ga", "grad_diff", "ga_kl", "npo", "npo_rt", "npo_kl", "yao", "simnpo", "idk_dpo"):
        assert f"\n{name} " in "\n" + result.stdout
    assert "Zhang et al. 2024" in result.stdout and "Yao et al. 2023" in result.stdout


def test_stop_and_status_commands(tmp_path):
    run = RunDir.prepare(tmp_path / "run")
    run.write_config({"method": "npo"})
    run.write_status("running", pid=os.getpid(), step=3)
    status = unlearn("status", run.path, "--json")
    assert json.loads(status.stdout)["step"] == 3
    assert unlearn("status", run.path).stdout.startswith("running: npo, step 3; updated ")   # words
    assert unlearn("stop", run.path).returncode == 0 and run.stop_requested()
    assert_clean_error(unlearn("stop", tmp_path / "nothing"), "not a run directory")


def test_status_in_words_says_state_method_progress_time_left_and_age():
    from core.cli import describe_status

    running = {"state": "running", "method": "npo_rt", "step": 12, "total_steps": 40, "eta_seconds": 70.4,
               "updated_at": 1000.0, "message": "epoch 1"}
    assert describe_status(running, {}, now=1004.0) == \
        "running: npo_rt, step 12 of 40 (30 %), about 1m 10s left; updated 4s ago\n  epoch 1"
    finished = {"state": "finished", "step": 40, "total_steps": 40, "eta_seconds": 0.0, "updated_at": 0.0,
                "message": "done"}
    assert describe_status(finished, {"method": "ga"}, now=7500.0) == \
        "finished: ga, step 40 of 40 (100 %); updated 2h 05m ago"
    failed = {"state": "failed", "error": "out of memory", "updated_at": 10.0}
    assert describe_status(failed, {}, now=10.0) == "failed; updated 0s ago\n  out of memory"
    assert describe_status({}, {}) == "queued"


def test_every_command_prints_its_help(capsys):
    """Help texts are generated from the methods' and suites' declarations: a stray % once broke one."""
    from unlearn.cli import build_parser, main

    commands = build_parser()._subparsers._group_actions[0].choices
    for name in commands:
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0, name
        assert "usage: unlearn " + name in capsys.readouterr().out
