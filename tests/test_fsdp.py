"""`accelerate launch --config_file configs/accelerate/fsdp.yaml` shards the model across two CPU processes
(FSDP2 over gloo): proved by the local shapes each rank reports of its parameters (UNLEARN_SHARD_REPORT), not
by the config. One FSDP run is shared by the checks that read it; every launch costs ~20-60 s here."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import free_port, write_qa_files
from core.distributed import SHARD_REPORT_ENV, refuse_unsupported_launch, requested_engine
from core.errors import UnlearnError
from core.runs import RunDir

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "accelerate"
multiprocess = pytest.mark.multiprocess


def launch_command(config: Path, *train_args) -> list[str]:
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    return [accelerate, "launch", "--config_file", str(config), "--num_processes", "2", "--main_process_port",
            str(free_port()), "-m", "core.cli", "train", *map(str, train_args)]


def launch(config: Path, *train_args, env: dict | None = None, timeout: int = 600):
    return subprocess.run(launch_command(config, *train_args), capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**os.environ, **(env or {})})


def fresh_run_args(model_dir: Path, root: Path, out: Path, *extra) -> list:
    files = write_qa_files(root, 8, 16)
    return ["--model", model_dir, "--forget", files["forget"], "--retain", files["retain"], "--out", out,
            "--batch-size", "2", "--lr", "3e-3", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, tiny_model_dir):
    """npo_rt (the cached NPO reference) for 4 steps under FSDP2, a checkpoint at step 2; each rank reports
    its parameters' local shapes."""
    root = tmp_path_factory.mktemp("fsdp")
    out, shards = root / "run", root / "shards"
    result = launch(CONFIGS / "fsdp.yaml", *fresh_run_args(tiny_model_dir, root, out, "--max-steps", "4",
                                                           "--save-steps", "2"),
                    env={SHARD_REPORT_ENV: str(shards)})
    assert result.returncode == 0, result.stderr[-3000:]
    return out, shards


@multiprocess
def test_an_fsdp_launch_shards_every_parameter_across_two_cpu_processes(fsdp_run, tiny_model_dir):
    out, shards = fsdp_run
    reports = [json.loads((shards / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    embedding = "model.embed_tokens.weight"
    for report in reports:   # each rank holds half the rows of the 49152x32 embedding, and of every matrix
        assert report[embedding]["local"] == [report[embedding]["full"][0] // 2, 32]
        for name, shapes in report.items():
            assert shapes["local"][0] == -(-shapes["full"][0] // 2) or shapes["local"][0] == shapes["full"][0] // 2, name
    run = RunDir(out)
    environment = run.config()["environment"]
    assert environment["engine"] == environment["engine_requested"] == {"engine": "FSDP", "fsdp_version": 2}
    assert (environment["distributed_type"], environment["num_processes"]) == ("FSDP", 2)
    assert run.status()["state"] == "finished"
    # the final model in the usual layout: the full weights, gathered, tied weights once, as the model started
    saved, started = (load_file(str(folder / "model.safetensors")) for folder in (out / "model", tiny_model_dir))
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in started.items()}
    assert not torch.equal(saved[embedding], started[embedding])
    summary = json.loads(run.summary_path.read_text())
    assert summary["after"]["forget_nll"] > summary["before"]["forget_nll"]


@multiprocess
def test_an_fsdp_checkpoint_resumes_exactly(fsdp_run, tmp_path):
    """The run rolled back to its step-2 checkpoint (as a stop there leaves it) and resumed under FSDP ends
    with the uninterrupted run's losses and weights."""
    out, _ = fsdp_run
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed, ignore=shutil.ignore_patterns("model", "summary.json"))
    run = RunDir(resumed)
    run.write_status("stopped", step=2, message="stopped; resume with --resume")
    assert [c.name for c in run.checkpoints()] == ["step-000002"]
    result = launch(CONFIGS / "fsdp.yaml", "--out", resumed, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from step-000002" in result.stdout
    uninterrupted = RunDir(out).metrics()
    assert [row["step"] for row in run.metrics()] == [1, 2, 3, 4]
    for row, expected in zip(run.metrics()[2:], uninterrupted[2:]):
        assert row["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    weights, expected = (load_file(str(folder / "model" / "model.safetensors")) for folder in (resumed, out))
    for name in expected:
        torch.testing.assert_close(weights[name], expected[name], rtol=1e-5, atol=1e-6)


@multiprocess
def test_a_killed_process_ends_the_run_interrupted_and_it_resumes(tiny_model_dir, tmp_path):
    import psutil

    out = tmp_path / "run"
    command = launch_command(CONFIGS / "fsdp.yaml", *fresh_run_args(tiny_model_dir, tmp_path, out, "--max-steps",
                                                                     "12", "--save-steps", "2"))
    launcher = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        run = RunDir(out)
        deadline = time.time() + 300
        while not (run.status().get("step", 0) >= 3 and run.latest_checkpoint()) and launcher.poll() is None:
            assert time.time() < deadline, "the run never reached step 3"
            time.sleep(0.2)
        rank1 = [p for p in psutil.Process(launcher.pid).children(recursive=True) if p.environ().get("RANK") == "1"]
        rank1[0].send_signal(signal.SIGKILL)
        launcher.wait(timeout=120)   # not hung: the survivor's collective fails and the launcher ends
    finally:
        if launcher.poll() is None:
            launcher.kill()
    status = run.status()
    assert status["state"] == "interrupted", status
    assert "--resume" in status["message"]
    checkpoint = run.latest_checkpoint()
    result = launch(CONFIGS / "fsdp.yaml", "--out", out, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {checkpoint.name}" in result.stdout
    assert run.status()["state"] == "finished"
    assert [row["step"] for row in run.metrics()] == list(range(1, 13))   # one line per step, none twice


# ---------------------------------------------------------------- every method family under FSDP (slow)

@multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("family, args", [
    ("kl_frozen_copy", ["--method", "npo_kl"]),
    ("kl_adapter_off", ["--method", "npo_kl", "--lora"]),
    ("rmu_hidden_states", ["--method", "rmu", "--layer", "1", "--steering-coeff", "20"]),
    ("sure_masked_gradients", ["--method", "sure"]),
    # the straight-through layer quantises each weight again in its backward: read while FSDP has it unsharded
    ("quant_aware_both_files", ["--method", "npo_rt", "--quant-aware", "1", "--quant-aware-format", "q4_0,q4_k_m"]),
])
def test_each_method_family_trains_sharded(tiny_model_dir, tmp_path, family, args):
    out, shards = tmp_path / "run", tmp_path / "shards"
    result = launch(CONFIGS / "fsdp.yaml", *fresh_run_args(tiny_model_dir, tmp_path, out, "--max-steps", "2", *args),
                    env={SHARD_REPORT_ENV: str(shards)})
    assert result.returncode == 0, result.stderr[-3000:]
    run = RunDir(out)
    assert run.config()["environment"]["engine"] == {"engine": "FSDP", "fsdp_version": 2}
    trained = {name: s for name, s in json.loads((shards / "rank-1.json").read_text()).items() if "lora_A" in name
               or "down_proj" in name}
    assert trained and all(s["local"][0] < s["full"][0] for s in trained.values())
    summary = json.loads(run.summary_path.read_text())
    assert summary["after"]["forget_nll"] != summary["before"]["forget_nll"]
    if family == "sure_masked_gradients":
        assert 0 < run.metrics()[-1]["salient_share"] < 1
    if family == "quant_aware_both_files":
        assert {"loss_quant_q4_0_forget_npo", "loss_quant_q4_k_m_forget_npo"} <= set(run.metrics()[-1])
    if family == "kl_adapter_off":
        assert (out / "model" / "adapter_model.safetensors").is_file()


@multiprocess
@pytest.mark.slow
def test_an_fsdp_result_evaluates_and_exports(fsdp_run, tmp_path):
    from conftest import run_unlearn

    out, _ = fsdp_run
    evaluated = run_unlearn("eval", out, "--suite", "quick", "--out", tmp_path / "eval", "--max-samples", "2",
                            "--max-new-tokens", "4", "--device", "cpu")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["after"]["forget"]["nll"] > 0
    exported = run_unlearn("export", out, "--out", tmp_path / "bundle", "--formats", "hf")
    assert exported.returncode == 0, exported.stderr[-2000:]


# ---------------------------------------------------------------- refused before anything loads

def test_fsdp_version_1_on_cpu_is_refused_with_a_fix():
    with pytest.raises(UnlearnError) as refused:
        refuse_unsupported_launch("cpu", {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"})
    assert "fsdp_version: 2" in refused.value.fix and "fsdp.yaml" in refused.value.fix
    refuse_unsupported_launch("cpu", {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"})   # accepted


def test_deepspeed_is_refused_where_it_is_not_installed():
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here: the refusal does not apply")
    with pytest.raises(UnlearnError) as refused:
        refuse_unsupported_launch("cuda", {"ACCELERATE_USE_DEEPSPEED": "true"})
    assert "not installed" in refused.value.problem and "fsdp.yaml" in refused.value.fix


def test_the_engine_asked_for_is_read_from_the_launch():
    assert requested_engine({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}) == {"engine": "FSDP",
                                                                                       "fsdp_version": 2}
    assert requested_engine({"WORLD_SIZE": "2"}) == {"engine": "DDP"}
    assert requested_engine({}) == {"engine": "none"}


@multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("version, method, refusal", [
    (1, "npo_rt", "error: FSDP version 1 cannot run on CPU processes"),
    (2, "npo_sam", "error: method npo_sam takes a gradient between two forward passes"),
    (2, "npo_wa", "error: method npo_wa keeps the weights it hands over as the final model"),
])
def test_a_refused_launch_gives_an_error_and_a_fix_before_loading(tiny_model_dir, tmp_path, version, method, refusal):
    """Each process refuses before loading the model (the launcher ends the other at the first one's exit, so
    one or two print it); torchrun's own ChildFailedError report follows, as for any failed launch."""
    config = tmp_path / "fsdp.yaml"
    config.write_text((CONFIGS / "fsdp.yaml").read_text().replace("fsdp_version: 2", f"fsdp_version: {version}"))
    result = launch(config, *fresh_run_args(tiny_model_dir, tmp_path, tmp_path / "run", "--max-steps", "1",
                                            "--method", method))
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith(refusal)]
    assert 1 <= len(errors) <= 2, result.stderr[-3000:]
    assert all(lines[i + 1].strip().startswith("fix: ") for i in errors)
    assert "sync_module_states=True" not in result.stderr and "/core/" not in result.stderr   # no trace of ours
    assert "Loading weights" not in result.stderr
