"""A signal at any point of a run — reading data, loading, the reference cache, scoring, the knowledge check,
training, saving — ends it promptly with one line, a status that is not `running`, and no traceback; the
same for eval, audit and export (issue 35, item 3)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

import core.trainer
from core.cli import _stop_on_signals, main
from core.runs import RunDir, RunState
from core.trainer import StopRequest


def train_args(tiny_model_dir, qa_files, out, *extra) -> list[str]:
    return ["train", "--model", str(tiny_model_dir), "--forget", str(qa_files["forget"]), "--retain",
            str(qa_files["retain"]), "--out", str(out), "--lr", "1e-3", "--device", "cpu", "--max-steps", "3",
            "--eval-examples", "4", *extra]


def test_outside_the_loop_the_first_signal_interrupts_inside_it_waits_for_the_step():
    stop = StopRequest()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _stop_on_signals(stop)
        handler = signal.getsignal(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):   # loading, scoring: nothing to wait for
            handler(signal.SIGTERM, None)
        assert not stop.is_set()
        stop.at_step_boundary = True             # the loop runs: stop after this step
        handler(signal.SIGTERM, None)
        assert stop.is_set()
        with pytest.raises(KeyboardInterrupt):   # a second signal aborts
            handler(signal.SIGTERM, None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# Each phase of a run, and the trainer method that runs it; a signal is raised inside it as the handler does.
PHASES = {"reading data": "_read_data", "loading model": "_load_model", "reference cache": "_cache_reference",
          "scoring the original": "_score", "knowledge check": "_knowledge_check", "saving the model": "_save_final"}


@pytest.mark.parametrize("phase", list(PHASES))
def test_a_signal_in_any_phase_ends_the_run_in_one_line(phase, tiny_model_dir, qa_files, tmp_path, monkeypatch,
                                                        capsys):
    name = PHASES[phase]
    if name == "_save_final":   # the final model is saved by core.models.save_model_atomic
        monkeypatch.setattr(core.trainer, "save_model_atomic", _interrupt)
    else:
        monkeypatch.setattr(core.trainer.Trainer, name, _interrupt)
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, qa_files, out)) == 130
    lines = our_lines(capsys.readouterr().err)
    status = RunDir(out).status()
    assert status["state"] == RunState.INTERRUPTED and lines == [status["message"]]
    assert "start again with" in status["message"]


def test_a_signal_while_training_after_a_checkpoint_stops_resumably(tiny_model_dir, qa_files, tmp_path, monkeypatch,
                                                                   capsys):
    calls = {"n": 0}
    micro_step = core.trainer.Trainer._micro_step

    def second_step_interrupted(self, *args):
        calls["n"] += 1
        if calls["n"] == 2:   # a second Ctrl-C mid-step, after step 1's checkpoint
            raise KeyboardInterrupt
        return micro_step(self, *args)

    monkeypatch.setattr(core.trainer.Trainer, "_micro_step", second_step_interrupted)
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, qa_files, out, "--save-steps", "1")) == 130
    status = RunDir(out).status()
    assert status["state"] == RunState.STOPPED and "--resume" in status["message"]
    assert "Traceback" not in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert RunDir(out).status()["state"] == RunState.FINISHED


@pytest.mark.parametrize("command", ["eval", "audit", "export"])
def test_eval_audit_and_export_end_in_one_line_on_a_signal(command, tmp_path, monkeypatch, capsys):
    from unlearn.cli import main as unlearn_main

    target = {"eval": ("core.evaluation.evaluator", "evaluate"), "audit": ("audit", "run_audit"),
              "export": ("export.bundle", "export_run")}[command]
    monkeypatch.setattr(__import__(target[0], fromlist=["_"]), target[1], _interrupt)
    args = {"eval": ["eval", "bundled", "--suite", "quick", "--out", str(tmp_path / "e")],
            "audit": ["audit", str(tmp_path), "--out", str(tmp_path / "a")],
            "export": ["export", str(tmp_path), "--out", str(tmp_path / "b")]}[command]
    assert unlearn_main(args) == 130
    printed = capsys.readouterr()
    lines = our_lines(printed.out + printed.err)
    assert len(lines) == 1 and "interrupted" in lines[0], lines


@pytest.mark.bundled
def test_sigterm_while_loading_or_scoring_the_original_model_ends_promptly(tmp_path):
    """A real signal to a real process: the bundled model loads and scores its original for a few seconds."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "unlearn", "train", "--model", "bundled", "--method", "npo_rt",
                                "--forget", str(repo / "assets/examples/forget.jsonl"), "--retain",
                                str(repo / "assets/examples/retain.jsonl"), "--out", str(out), "--max-steps", "5",
                                "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    phases = ("loading model", "scoring the original model")
    while time.time() < deadline and RunDir(out).status().get("message") not in phases:
        time.sleep(0.01)
    phase = RunDir(out).status().get("message")
    process.send_signal(signal.SIGTERM)
    sent = time.time()
    _, stderr = process.communicate(timeout=60)
    assert time.time() - sent < 20, "the run did not end promptly"
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    assert RunDir(out).status()["state"] in (RunState.INTERRUPTED, RunState.STOPPED)
    last = our_lines(stderr)[-1]   # the phase it reached by the time the signal landed
    assert phase in phases and any(last.startswith(f"interrupted while {p}") for p in phases), (phase, stderr)


def our_lines(stderr: str) -> list[str]:
    """What the command itself printed: no traceback, and without the libraries' progress bars."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt
