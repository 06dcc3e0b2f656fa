"""User-given paths: output folders are checked before any work, relative paths are made absolute once."""
from __future__ import annotations

import os

import pytest

from core.errors import UnlearnError
from conftest import run_unlearn
from core.paths import absolute_spec, writable_folder


def test_a_folder_that_can_be_made_is_returned_absolute_and_nothing_is_left_behind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = writable_folder("runs/new/deeper")
    assert target == tmp_path / "runs" / "new" / "deeper"
    assert list(tmp_path.iterdir()) == []   # the check made and removed its probe; it created no folder


def test_an_existing_folder_is_fine(tmp_path):
    (tmp_path / "here").mkdir()
    assert writable_folder(tmp_path / "here") == tmp_path / "here"
    assert list((tmp_path / "here").iterdir()) == []


@pytest.mark.parametrize("where, expected", [
    ("/proc/unlearn_out", "/proc does not accept new folders"),
    ("FILE/inside", "is a file, not a folder"),
    ("FILE", "is a file, not a folder"),
])
def test_impossible_output_folders_are_refused_in_one_message(tmp_path, where, expected):
    (tmp_path / "FILE").write_text("x")
    path = where.replace("FILE", str(tmp_path / "FILE"))
    with pytest.raises(UnlearnError, match=expected) as refused:
        writable_folder(path, "--out")
    assert refused.value.fix and path in refused.value.problem


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="root may write into any folder, so a folder without write permission cannot be shown")
def test_a_folder_without_write_permission_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(UnlearnError, match="no permission"):
        writable_folder(locked / "run")


def test_specs_stay_and_existing_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "forget.jsonl").write_text("{}\n")
    assert absolute_spec("forget.jsonl") == str(tmp_path / "forget.jsonl")
    for spec in ("tofu:forget01", "hf:org/name", "bundled", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        assert absolute_spec(spec) == spec


def test_train_refuses_an_unwritable_out_before_loading_anything(tmp_path):
    (tmp_path / "forget.txt").write_text("a passage to forget\n")
    result = run_unlearn("train", "--model", "no-such-model-dir-here/x", "--forget", tmp_path / "forget.txt",
                         "--out", "/proc/unlearn_out")
    # the model name would fail too (no such model): the folder is checked first, before any model is looked at
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: --out /proc/unlearn_out cannot be written") and "fix:" in result.stderr


def test_relative_paths_work_from_another_folder(tiny_model_dir, qa_files, tmp_path):
    """A run made with relative paths in one folder is read from another folder by relative paths too: each
    path is resolved once, where the command reads it (issue 35 item 9)."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    trained = run_unlearn("train", "--model", tiny_model_dir, "--forget", qa_files["forget"], "--out", "runs/rel",
                          "--method", "npo", "--max-steps", 1, "--device", "cpu", "--eval-examples", 2, cwd=first)
    assert trained.returncode == 0, trained.stderr
    status = run_unlearn("status", "../first/runs/rel", cwd=second)
    assert status.returncode == 0 and status.stdout.startswith("finished: npo"), status.stderr
    evaluated = run_unlearn("eval", "../first/runs/rel", "--suite", "quick", "--out", "evals/rel", "--max-samples", 2,
                            "--max-new-tokens", 2, "--device", "cpu", cwd=second)
    assert evaluated.returncode == 0, evaluated.stderr
    assert (second / "evals" / "rel" / "summary.json").is_file()
    audited = run_unlearn("audit", "../first/runs/rel", "--out", "audits/rel", "--attacks", "relearn",
                          "--relearn-steps", 1, "--relearn-lr", "x1", "--max-samples", 4, "--max-new-tokens", 2,
                          "--device", "cpu", cwd=second)
    assert audited.returncode == 0, audited.stderr
    assert (second / "audits" / "rel" / "audit.json").is_file()


def test_eval_refuses_an_unwritable_out_before_loading_the_model(tmp_path):
    (tmp_path / "f").write_text("a file")
    result = run_unlearn("eval", "no-such-model-dir-here/x", "--suite", "quick", "--out", tmp_path / "f" / "x")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: --out {tmp_path / 'f' / 'x'} cannot be made") and "fix:" in result.stderr
