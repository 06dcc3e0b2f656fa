"""A method may give the run its own final model (final_weights(): e.g. a weight average)."""
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from conftest import quiet
from core.methods import METHODS, register
from core.methods.ga import GradientAscent
from core.runs import RunDir
from core.trainer import train


@pytest.fixture()
def keeps_its_start():
    """Gradient ascent whose final model is the weights it started from."""
    @register
    class KeepsItsStart(GradientAscent):
        name = "_keeps_its_start"

        def prepare(self, setup):
            self.start = {name: p.detach().clone() for name, p in setup.model.named_parameters() if p.requires_grad}

        def final_weights(self):
            return self.start
    try:
        yield KeepsItsStart
    finally:
        METHODS.pop(KeepsItsStart.name)


def test_the_final_model_is_the_methods_own(tiny_config, tiny_model_dir, keeps_its_start):
    result = train(replace(tiny_config, method=keeps_its_start.name, retain=None, lr=1e-2), **quiet())
    saved = load_file(str(RunDir(result.run_dir).model_dir / "model.safetensors"))
    original = load_file(str(tiny_model_dir / "model.safetensors"))
    assert all(torch.equal(saved[name], original[name]) for name in original)
    assert result.summary["after"]["forget_nll"] == pytest.approx(result.summary["before"]["forget_nll"], abs=1e-5)
    last = RunDir(result.run_dir).metrics()[-1]
    assert last["forget_nll"] > result.summary["before"]["forget_nll"]   # it did train, away from them
