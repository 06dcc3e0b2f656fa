"""Nonsensical settings, unknown methods and config files get one clear message each."""
from dataclasses import replace

import pytest

from core.config import FULL_FINETUNE_LR, LORA_LR, UnlearnConfig
from core.errors import UnlearnError

BASE = UnlearnConfig(forget="tofu:forget01", retain="tofu:retain99")


@pytest.mark.parametrize("change,message", [
    ({"method_params": {"beta": 0.0}}, "npo_rt's beta must be > 0, got 0.0"),
    ({"method_params": {"beta": -1.0}}, "npo_rt's beta must be > 0"),
    ({"method_params": {"beta": "hot"}}, "npo_rt's beta must be a number"),
    ({"lr": 0.0}, "learning rate must be positive"),
    ({"lr": -1e-5}, "learning rate must be positive"),
    ({"lr": float("nan")}, "learning rate must be positive"),
    ({"batch_size": 0}, "batch_size must be at least 1"),
    ({"grad_accum": 0}, "grad_accum must be at least 1"),
    ({"epochs": 0.0}, "epochs must be positive"),
    ({"max_steps": -3}, "max_steps must be 0 or more"),
    ({"max_length": 2}, "too short"),
    ({"lora_r": 0}, "lora_r must be at least 1"),
    ({"warmup_ratio": 1.5}, "warmup_ratio"),
    ({"method_params": {"retain_weight": -1.0}}, "npo_rt's retain_weight must be >= 0"),
    ({"method": "yao", "method_params": {"mismatch_k": 0}}, "yao's mismatch_k must be >= 1"),
    ({"method": "yao", "method_params": {"mismatch_k": 2.5}}, "yao's mismatch_k must be a whole number"),
    ({"device": "tpu"}, "unknown device"),
    ({"dtype": "float8"}, "unknown dtype"),
    ({"forget": ""}, "no forget set"),
    ({"method": "forget_everything"}, "unknown method"),
    ({"method": "ga", "method_params": {"beta": 0.2}}, "method ga has no hyper-parameter beta"),
    ({"resume": True, "overwrite": True}, "contradict"),
])
def test_bad_settings(change, message):
    with pytest.raises(UnlearnError) as info:
        replace(BASE, **change).resolved()
    assert message in str(info.value)


def test_defaults_resolve_per_method_and_adapter():
    npo = replace(BASE, method="npo_rt").resolved()
    assert npo.method_params == {"beta": 0.1, "forget_weight": 1.0, "retain_weight": 1.0}
    assert npo.lr == FULL_FINETUNE_LR
    assert replace(BASE, lora=True).resolved().lr == LORA_LR
    yao = replace(BASE, method="yao", method_params={"mismatch_k": 3}).resolved()
    assert yao.method_params == {"forget_weight": 0.5, "mismatch_weight": 1.0, "kl_weight": 1.0, "mismatch_k": 3,
                                 "max_forget_loss": 100.0}
    assert replace(BASE, method="simnpo").resolved().method_params["beta"] == 4.5


def test_config_file_yaml_and_unknown_keys(tmp_path):
    good = tmp_path / "run.yaml"
    good.write_text("method: npo\nforget: tofu:forget01\nmax-steps: 7\nbeta: 0.2\n")
    config = UnlearnConfig.from_file(good)
    assert (config.method, config.max_steps, config.method_params) == ("npo", 7, {"beta": 0.2})
    typo = tmp_path / "typo.json"
    typo.write_text('{"forget": "x.txt", "learning_rate": 1}')
    with pytest.raises(UnlearnError, match="unknown setting.*learning_rate"):
        UnlearnConfig.from_file(typo)
    broken = tmp_path / "broken.yaml"
    broken.write_text("method: [npo\n")
    with pytest.raises(UnlearnError, match="not valid YAML"):
        UnlearnConfig.from_file(broken)


def test_config_file_numbers_in_any_notation_and_wrong_types(tmp_path):
    # YAML 1.1 reads 1e-5 (no dot) as text; JSON writes 1e-05 that way too (the studio's run requests)
    for name, text in (("run.yaml", "lr: 1e-5\nmax_steps: 10.0\nlora: true\n"),
                       ("run.json", '{"lr": 1e-05, "max_steps": 10, "lora": true}')):
        path = tmp_path / name
        path.write_text(text)
        config = UnlearnConfig.from_file(path)
        assert (config.lr, config.max_steps, config.lora) == (1e-5, 10, True)
        assert type(config.lr) is float and type(config.max_steps) is int
    for text, message in (("lr: fast\n", "setting lr must be a number, got 'fast'"),
                          ("max_steps: 2.5\n", "setting max_steps must be a whole number"),
                          ("lora: 1\n", "setting lora must be true or false"),
                          ("beta: [1]\n", "npo_rt's beta must be a number, got \\[1\\]")):
        path = tmp_path / "bad.yaml"
        path.write_text(f"forget: x.jsonl\n{text}")
        with pytest.raises(UnlearnError, match=message):
            UnlearnConfig.from_file(path).resolved()   # a method's hyper-parameters: checked by the method
    path.write_text("forget: x.jsonl\nbeta: 2e-1\n")          # YAML text for a number, as for lr
    assert UnlearnConfig.from_file(path).resolved().method_params["beta"] == 0.2


OLD_GA_KL_CONFIG = {   # config.json as runs wrote it before each method declared its own hyper-parameters
    "model": "bundled", "method": "ga_kl", "forget": "tofu:forget01", "retain": "tofu:retain99", "out": "runs/x",
    "beta": None, "delta": None, "forget_weight": None, "retain_weight": 0.5, "mismatch_weight": None,
    "mismatch_k": None, "max_forget_loss": None, "method_params": {"forget_weight": 1.0, "retain_weight": 0.5}}


def test_a_config_json_written_before_the_parameter_specs_still_reads():
    config = UnlearnConfig.from_dict(OLD_GA_KL_CONFIG).resolved()
    # ga_kl's retain_weight weighted its KL term: it is kl_weight now
    assert config.method_params == {"forget_weight": 1.0, "kl_weight": 0.5}
