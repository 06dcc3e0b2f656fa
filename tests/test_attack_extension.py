"""Adding an audit attack is one file: a throw-away "noise" attack (the unlearned weights with Gaussian noise
added, the forget set measured), written here into a temporary folder and named in UNLEARN_ATTACK_MODULES,
is listed by `unlearn audit --help` with its option as a flag, runs through `unlearn audit --attacks noise`
on a tiny run and lands in audit.json and audit.md, is refused with one clear error for a bad option value,
and is offered by the studio's Audit tab, with nothing in the repository edited."""
from __future__ import annotations

import importlib
import json
import sys

import pytest

from conftest import module_env, run_unlearn
from core.errors import UnlearnError
from test_audit import lora_run  # noqa: F401  (the tiny LoRA run the audit's own tests attack)

NOISE_ATTACK = '''
import copy

import torch

from audit.attacks import Attack, register_attack
from core.methods.params import Param


@register_attack
class Noise(Attack):
    name = "noise"
    summary = "add Gaussian noise to the unlearned weights, measure the forget set"
    enabled_by_default = False
    params = (Param("noise_scale", 0.01, "standard deviation of the noise added to every weight", "this test",
                    low=0.0, above=True),)

    def run(self, context):
        model, tokenizer = context.models["unlearned"]
        noisy = copy.deepcopy(model)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for weight in noisy.parameters():
                noise = torch.randn(weight.shape, generator=generator) * context.options["noise_scale"]
                weight.add_(noise.to(weight.dtype))
        return [{"name": self.name, "scale": context.options["noise_scale"],
                 "forget": {"set": "forget", **context.baseline("forget", context.forget),
                            "attacked": context.measure(noisy, tokenizer, context.forget, "noise forget")}}]
'''
FAST = ["--max-samples", "4", "--max-new-tokens", "4", "--batch-size", "4", "--device", "cpu", "--dtype", "float32"]


@pytest.fixture
def attack_folder(tmp_path):
    folder = tmp_path / "attacks"
    folder.mkdir()
    return folder


@pytest.fixture
def noise_env(attack_folder):
    return module_env(attack_folder, "UNLEARN_ATTACK_MODULES", "noise_attack", NOISE_ATTACK)


def test_the_new_attack_gets_its_flag_and_runs_through_unlearn_audit(noise_env, lora_run, tmp_path):
    usage = " ".join(run_unlearn("audit", "--help", env=noise_env).stdout.split())   # argparse wraps lines
    assert "--noise-scale X" in usage and "noise (add Gaussian noise to the unlearned weights" in usage
    assert "(default: relearn,benign,quantize,rephrase)" in usage      # not enabled by default: listed, not run

    out = tmp_path / "audit"
    done = run_unlearn("audit", lora_run.out, "--out", out, "--attacks", "noise", "--noise-scale", "0.05", *FAST,
                       env=noise_env)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "audit.json").read_text())
    (result,) = report["results"]
    assert report["attacks"] == ["noise"] and report["options"] == {"noise": {"noise_scale": 0.05}}
    assert result["name"] == "noise" and result["scale"] == 0.05
    forget = result["forget"]
    assert forget["attacked"]["nll"] != forget["unlearned"]["nll"]       # the noise moved the model
    if result["recovery"]["nll"] is not None:                            # the audit's own formula
        expected = (forget["attacked"]["nll"] - forget["unlearned"]["nll"]) / (
            forget["original"]["nll"] - forget["unlearned"]["nll"])
        assert result["recovery"]["nll"] == pytest.approx(expected)
    written = (out / "audit.md").read_text()
    assert "| noise |" in written and "Attack options: noise: noise_scale 0.05." in written
    assert written.strip() in done.stdout


def test_a_bad_option_of_the_new_attack_is_one_clear_error(noise_env, lora_run, tmp_path):
    refused = run_unlearn("audit", lora_run.out, "--out", tmp_path / "bad", "--attacks", "noise", "--noise-scale", "-1",
                          *FAST, env=noise_env)
    assert refused.returncode == 2
    assert "error: noise's noise_scale must be > 0, got -1.0" in refused.stderr
    assert "fix: use for example --noise-scale 0.01" in refused.stderr
    assert not (tmp_path / "bad").exists()      # refused before anything was written


@pytest.fixture
def noise_attack(noise_env, attack_folder, monkeypatch):
    """The attack imported into this process as UNLEARN_ATTACK_MODULES would, and forgotten after the test."""
    from audit.attacks import ATTACKS

    monkeypatch.syspath_prepend(str(attack_folder))
    try:
        yield importlib.import_module("noise_attack").Noise
    finally:                                          # the registry and sys.modules forget it after the test
        ATTACKS.pop("noise", None)
        sys.modules.pop("noise_attack", None)


def test_the_studio_offers_the_new_attack_and_the_python_entry_point_checks_it(noise_attack, lora_run, tmp_path):
    from audit import run_audit
    from audit.attacks import attack_names, default_attacks
    from studio.tabs.audit import step_flags, ticked_attacks

    assert attack_names()[-1] == "noise" and "noise" not in default_attacks() + ticked_attacks()
    assert step_flags(["noise", "relearn"], 5) == ["--relearn-steps", "5"]   # noise has no fine-tuning steps
    with pytest.raises(UnlearnError, match="noise's noise_scale must be a number, got 'loud'"):
        run_audit(lora_run.out, tmp_path / "audit", ["noise"], {"noise_scale": "loud"}, log=lambda m: None)
