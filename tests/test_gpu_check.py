"""benchmarks/gpu_check.sh (issue 33) cannot run its real steps here (no GPU): it is checked for syntax, and its
CPU dry run writes the report with each step's time and exit code (a few steps on the tiny model by default;
every step, the trainer benchmark, demo run and export included, under `pytest -m slow`)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def dry_run(tmp_path: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, cwd=REPO, timeout=3000,
                          env={**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "check"), **env})


def steps(tmp_path: Path) -> dict[str, tuple[str, str]]:
    rows = (tmp_path / "check" / "steps.tsv").read_text().splitlines()
    return {name: (seconds, code) for name, seconds, code in (row.split("\t") for row in rows)}


def test_the_script_parses_and_refuses_unknown_options():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    refused = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True)
    assert refused.returncode == 2 and "unknown option --fast" in refused.stderr


@pytest.mark.slow   # ~70 s; the failing-step test below runs the dry run and its report in the default suite
def test_dry_run_trains_plans_and_reports(tmp_path, tiny_model_dir, qa_files):
    done = dry_run(tmp_path, MODEL=str(tiny_model_dir), FORGET=str(qa_files["forget"]), RETAIN=str(qa_files["retain"]),
                   ONLY="device,npo_rt_full,plan_qlora")
    assert done.returncode == 0, done.stdout + done.stderr
    ran = steps(tmp_path)
    assert ran["device"][1] == ran["npo_rt_full"][1] == ran["plan_qlora"][1] == "0"
    assert ran["qlora"][1] == "skipped (not in ONLY)" and ran["ddp"][1] == "skipped (fewer than 2 GPUs)"
    report = (tmp_path / "check" / "gpu_check.md").read_text()
    assert "| npo_rt_full |" in report and "- npo_rt_full: forget NLL" in report and "cuda False" in report


def test_a_failing_step_is_recorded_and_fails_the_script(tmp_path, tiny_model_dir):
    done = dry_run(tmp_path, MODEL=str(tiny_model_dir), FORGET=str(tmp_path / "missing.jsonl"), ONLY="device,npo_rt_full")
    assert done.returncode == 1 and steps(tmp_path)["npo_rt_full"][1] not in ("0", "")
    assert steps(tmp_path)["device"][1] == "0" and "| npo_rt_full |" in (tmp_path / "check" / "gpu_check.md").read_text()


@pytest.mark.slow
def test_the_whole_dry_run(tmp_path):
    done = dry_run(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(code == "0" or code.startswith("skipped (fewer") for _, code in steps(tmp_path).values())
