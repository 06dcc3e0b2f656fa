"""NPO+WA (weight averaging, Fan et al. 2025): trains exactly as NPO+RT, and its final model is the mean of
NPO+RT's weights at the averaged steps (computed here from NPO+RT's own checkpoints); a stopped and resumed
run ends with the same average; listed with its parameters."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from conftest import StopAfter, quiet, run_unlearn
from test_methods import learned  # noqa: F401  (module fixture: a model that knows its forget set)
from core.checkpoint import WEIGHTS
from core.config import UnlearnConfig
from core.runs import RunDir
from core.trainer import train

STEPS = 6


def config_for(model, files, out, method: str, **settings) -> UnlearnConfig:
    return UnlearnConfig(model=str(model), method=method, forget=str(files["forget"]), retain=str(files["retain"]),
                         out=str(out), max_steps=STEPS, batch_size=4, lr=3e-3, device="cpu",
                         eval_examples=0, **{"save_steps": 0, **settings})


def final_weights(run) -> dict[str, torch.Tensor]:
    folder = RunDir(run).model_dir
    return {name: value for path in sorted(folder.glob("*.safetensors")) for name, value in load_file(path).items()}


def test_final_model_is_the_mean_of_npo_rt_weights_at_the_averaged_steps(learned, tmp_path):  # noqa: F811
    model, files = learned
    # every second step from step 3 (0.5 of 6) on: the weights after steps 3 and 5
    averaged = train(config_for(model, files, tmp_path / "wa", "npo_wa",
                                method_params={"average_every": 2, "average_start": 0.5}), **quiet())
    plain = train(config_for(model, files, tmp_path / "rt", "npo_rt", save_steps=1, save_total_limit=STEPS),
                  **quiet())
    steps = {step: load_file(RunDir(plain.run_dir).checkpoints_dir / f"step-{step:06d}" / WEIGHTS) for step in (3, 5)}
    got = final_weights(averaged.run_dir)
    compared = 0
    for name, at3 in steps[3].items():
        if name not in got:   # a tied weight is saved once
            continue
        expected = (at3 + steps[5][name]) / 2
        assert torch.allclose(got[name], expected, rtol=1e-5, atol=1e-6), name
        assert not torch.allclose(got[name], final_weights(plain.run_dir)[name]), f"{name}: not averaged"
        compared += 1
    assert compared >= 4
    # training itself is NPO+RT's: the same loss at every step
    losses = [[row["loss"] for row in RunDir(run).metrics()] for run in (averaged.run_dir, plain.run_dir)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_resumed_run_ends_with_the_same_average(learned, tmp_path, lora):  # noqa: F811
    model, files = learned
    settings = dict(method_params={"average_every": 1, "average_start": 0.3}, lora=lora, lora_r=4)   # steps 2..6
    whole = train(config_for(model, files, tmp_path / "whole", "npo_wa", **settings), **quiet())
    parted = config_for(model, files, tmp_path / "parted", "npo_wa", **settings)
    assert train(parted, stop_event=StopAfter(4), **quiet()).state == "stopped"   # averaged steps 2-4 so far
    resumed = train(replace(parted, resume=True), **quiet())
    expected, got = final_weights(whole.run_dir), final_weights(resumed.run_dir)
    assert expected.keys() == got.keys() and (not lora or all("lora_" in name for name in got))
    for name in expected:
        assert torch.allclose(got[name], expected[name], rtol=1e-5, atol=1e-7), name


def test_listed_with_its_parameters_and_sources():
    listed = run_unlearn("methods").stdout
    assert "npo_wa" in listed and "--average-every 5  (>= 1)" in listed
    assert "Unlearn-Smooth (every 5 steps)" in listed and "--average-start 0.5" in listed


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_checkpoint_opens_as_the_model_the_run_would_end_with_there(learned, tmp_path, lora):  # noqa: F811
    """`unlearn eval RUN/checkpoints/step-N` of an NPO+WA run: its average so far, not the raw weights (those
    are NPO+RT's); before the averaging starts, the raw weights; after the last averaged step, the final model."""
    from core.models import load_run_model

    model, files = learned
    run = train(config_for(model, files, tmp_path / "wa", "npo_wa", save_steps=1, save_total_limit=STEPS, lora=lora,
                           lora_r=4, method_params={"average_every": 2, "average_start": 0.5}), **quiet()).run_dir
    checkpoints = RunDir(run).checkpoints_dir
    raw = {step: load_file(checkpoints / f"step-{step:06d}" / WEIGHTS) for step in (2, 3, 5)}

    def opened(step: int) -> dict[str, torch.Tensor]:   # under LoRA: the adapter's A and B, before merging
        weights = dict(load_run_model(run, checkpoints / f"step-{step:06d}", merge=False).named_parameters())
        return {name: weights[name].detach() for name in raw[2] if name in weights}

    assert len(opened(2)) >= 4
    for name, value in opened(2).items():      # step 2: no average yet
        assert torch.equal(value, raw[2][name]), name
    for name, value in opened(5).items():      # steps 3 and 5 averaged
        assert torch.allclose(value, (raw[3][name] + raw[5][name]) / 2, rtol=1e-5, atol=1e-6), name
        assert not torch.allclose(value, raw[5][name]), f"{name}: the raw weights"
        if not lora:   # a LoRA run's final model is its adapter, saved under PEFT's names
            assert torch.allclose(value, final_weights(run)[name], rtol=1e-5, atol=1e-7), name   # step 6 adds none
