"""`accelerate launch` runs the same trainer in two CPU processes (DDP over gloo)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.runs import RunDir

pytestmark = pytest.mark.multiprocess


def test_two_cpu_processes_train_one_run(tiny_model_dir, qa_files, tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    out = tmp_path / "run"
    # the shipped DDP config: accelerate's torchrun launcher (MULTI_GPU), each rank a CPU process (use_cpu)
    config = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "ddp.yaml"
    command = [accelerate, "launch", "--config_file", str(config), "--num_processes", "2", "--main_process_port",
               "29517", "-m", "core.cli", "train", "--model", str(tiny_model_dir), "--forget", str(qa_files["forget"]),
               "--retain", str(qa_files["retain"]), "--out", str(out), "--max-steps", "4", "--batch-size", "2",
               "--lr", "3e-3", "--device", "cpu", "--save-steps", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = RunDir(out)
    assert run.config()["environment"]["num_processes"] == 2
    assert run.config()["environment"]["distributed_type"] == "MULTI_CPU"
    assert run.config()["environment"]["engine"] == run.config()["environment"]["engine_requested"] == {"engine": "DDP"}
    assert "single-process launcher" not in result.stdout
    assert [row["step"] for row in run.metrics()] == [1, 2, 3, 4]     # rank 0 alone writes
    assert result.stdout.count("Unlearning finished") == 1
    assert run.status()["state"] == "finished"
    # 8 forget examples, 2 per rank per step, 2 ranks: one epoch is 2 steps
    assert run.metrics()[1]["epoch"] == pytest.approx(1.0)
    summary = json.loads(run.summary_path.read_text())
    assert summary["after"]["forget_nll"] > summary["before"]["forget_nll"]


def test_a_launch_that_asked_for_two_processes_but_runs_one_says_so(tiny_model_dir, qa_files, tmp_path):
    """Without --multi_gpu, accelerate's single-process launcher runs one process whatever --num_processes
    says (issue 35 item 7): the run warns, and config.json records what really ran."""
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    out = tmp_path / "run"
    command = [accelerate, "launch", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "-m", "core.cli", "train", "--model", str(tiny_model_dir), "--forget",
               str(qa_files["forget"]), "--out", str(out), "--max-steps", "1", "--device", "cpu", "--method", "npo"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "asked for several processes, but this run is one process" in result.stdout
    environment = RunDir(out).config()["environment"]
    assert (environment["num_processes"], environment["distributed_type"]) == (1, "NO")
