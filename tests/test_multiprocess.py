"""`accelerate launch` runs the same trainer in two CPU processes (DDP over gloo)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from core.runs import RunDir

pytestmark = pytest.mark.multiprocess


def test_two_cpu_processes_train_one_run(tiny_model_dir, qa_files, tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    out = tmp_path / "run"
    # `--multi_gpu` selects accelerate's torchrun launcher; `--device cpu` makes each rank a CPU process.
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
               "-m", "core.cli", "train", "--model", str(tiny_model_dir), "--forget", str(qa_files["forget"]),
               "--retain", str(qa_files["retain"]), "--out", str(out), "--max-steps", "4", "--batch-size", "2",
               "--lr", "3e-3", "--device", "cpu", "--save-steps", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = RunDir(out)
    assert run.config()["environment"]["num_processes"] == 2
    assert [row["step"] for row in run.metrics()] == [1, 2, 3, 4]     # rank 0 alone writes
    assert result.stdout.count("Unlearning finished") == 1
    assert run.status()["state"] == "finished"
    # 8 forget examples, 2 per rank per step, 2 ranks: one epoch is 2 steps
    assert run.metrics()[1]["epoch"] == pytest.approx(1.0)
    summary = json.loads(run.summary_path.read_text())
    assert summary["after"]["forget_nll"] > summary["before"]["forget_nll"]
