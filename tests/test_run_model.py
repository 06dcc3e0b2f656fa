"""One loader rebuilds a run's model for probe, evaluation and export: from a checkpoint of a stopped run
or from the final model, LoRA merged or kept switchable, and it matches the weights training produced."""
from dataclasses import replace

import pytest
import torch

from conftest import StopAfter, quiet
from core.errors import UnlearnError
from core.models import load_model
from core.models import load_run_model
from core.runs import RunDir
from core.trainer import train


def logits(model, ids=torch.tensor([[1, 5, 9, 14, 3]])):
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_stopped_lora_run_loads_from_its_checkpoint_merged_or_switchable(tiny_config):
    config = replace(tiny_config, lora=True, lr=5e-2, max_steps=6)
    assert train(config, **quiet(stop_event=StopAfter(2))).state == "stopped"
    merged = load_run_model(config.out)
    switchable = load_run_model(config.out, merge=False)
    assert not hasattr(merged, "disable_adapter") and hasattr(switchable, "disable_adapter")
    torch.testing.assert_close(logits(merged), logits(switchable))
    original = load_model(config.model)
    with switchable.disable_adapter():   # the adapter switched off is the model before unlearning
        torch.testing.assert_close(logits(switchable), logits(original))
    assert not torch.allclose(logits(merged), logits(original), atol=1e-4)   # training moved it


def test_finished_run_loads_its_final_model_and_a_named_checkpoint(tiny_config):
    config = replace(tiny_config, max_steps=4, save_steps=2, lr=5e-3)
    train(config, **quiet())
    run = RunDir(config.out)
    final = load_run_model(config.out)
    torch.testing.assert_close(logits(final), logits(load_model(str(run.model_dir))))
    step2 = load_run_model(config.out, checkpoint=run.checkpoints()[0])
    assert not torch.allclose(logits(step2), logits(final), atol=1e-5)   # an earlier state, not the final


def test_a_run_without_model_or_checkpoint_says_so(tiny_config):
    config = replace(tiny_config, max_steps=3)
    RunDir(config.out).path.mkdir(parents=True)
    RunDir(config.out).write_config({**config.to_dict(), "resolved_model": {"path": config.model}})
    with pytest.raises(UnlearnError, match="has no model or checkpoint yet"):
        load_run_model(config.out)
