"""Model names, devices and the bundled model's one-time conversion."""
import os
from pathlib import Path

import pytest
import torch

from core.errors import UnlearnError
from core.models import bundled_model_dir, inference_dtype, pick_device, resolve_model


def test_a_directory_without_config_is_not_a_model(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UnlearnError, match="not a Hugging Face model directory"):
        resolve_model(str(tmp_path))


def test_a_lora_runs_adapter_is_not_a_model_and_the_fix_says_how_to_merge_it(tmp_path):
    adapter = tmp_path / "run" / "model"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(UnlearnError, match="holds a LoRA adapter") as refused:
        resolve_model(str(adapter))
    assert f"unlearn export {tmp_path / 'run'} --formats hf" in refused.value.fix


def test_a_file_or_nonsense_is_not_a_model(tmp_path):
    file = tmp_path / "model.gguf"
    file.write_bytes(b"GGUF")
    with pytest.raises(UnlearnError, match="is a file"):
        resolve_model(str(file))
    with pytest.raises(UnlearnError, match="neither a directory nor a hub id"):
        resolve_model("not a model at all")


def test_hub_ids_pass_through_and_local_dirs_resolve(tiny_model_dir):
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)


def test_unreachable_hub_id_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    from core.models import load_tokenizer

    # The hub's offline switch is read at import time; flip the constant so the test does not wait on
    # network time-outs.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UnlearnError, match="could not load 'nobody/no-such-model'"):
        load_tokenizer("nobody/no-such-model")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_requested_without_cuda():
    with pytest.raises(UnlearnError, match="no usable CUDA GPU"):
        pick_device("cuda")


def test_bundled_model_is_converted_once_and_reused(bundled_dir):
    weights = bundled_dir / "model.safetensors"
    stamp = os.stat(weights).st_mtime_ns
    assert bundled_model_dir() == bundled_dir           # second call: no reconversion
    assert os.stat(weights).st_mtime_ns == stamp
    assert resolve_model("bundled") == str(bundled_dir)
    assert not list(bundled_dir.parent.glob(".convert-*"))  # no half-written staging left behind


@pytest.mark.parametrize("has_units,expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_dtype_is_bf16_only_on_a_cpu_with_bf16_units(monkeypatch, has_units, expected):
    import core.models

    monkeypatch.setattr(core.models, "cpu_has_bf16_units", lambda: has_units)
    assert inference_dtype("auto", torch.device("cpu")) == expected
    assert inference_dtype("float32", torch.device("cpu")) == torch.float32
    assert inference_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(UnlearnError, match="unknown dtype 'half'"):
        inference_dtype("half", torch.device("cpu"))




def test_a_bf16_lora_base_keeps_the_adapters_small_delta(tokenizer):
    """bf16 mixed precision with LoRA: the frozen linears hold bf16 weights, and a small adapter delta is
    still added in fp32 to their (upcast) output; added in bf16 it would round away."""
    from conftest import build_tiny_model
    from core.models import add_lora, frozen_linears_in_bf16

    model = build_tiny_model(tokenizer)
    assert frozen_linears_in_bf16(model) == 2 * 7   # q, k, v, o, gate, up, down in each of 2 layers
    assert model.model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16
    assert model.model.embed_tokens.weight.dtype == torch.float32 and model.lm_head.weight.dtype == torch.float32
    model = add_lora(model, r=4, alpha=4, dropout=0.0, targets="all-linear")
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    torch.nn.init.constant_(layer.lora_B["default"].weight, 1e-4)   # a few small steps into training
    x = torch.randn(3, 32) * 4
    expected = layer.lora_B["default"](layer.lora_A["default"](x))   # the delta in fp32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        adapted = layer(x)
        with model.disable_adapter():
            base = layer(x)
    assert adapted.dtype == torch.float32
    torch.testing.assert_close(adapted - base, expected.detach(), rtol=0.02, atol=1e-7)


def test_a_bf16_lora_base_lets_go_of_the_checkpoint_file(tiny_model_dir):
    """transformers memory-maps the checkpoint: while one fp32 tensor still maps the file, every page read
    from it stays resident, the replaced fp32 linears too (~400 MB on the bundled model). After the bf16
    conversion no tensor maps the file any more."""
    import gc

    from core.models import frozen_linears_in_bf16, load_model

    weights = str((tiny_model_dir / "model.safetensors").resolve())

    def mapped() -> bool:
        gc.collect()
        return weights in Path("/proc/self/maps").read_text()

    model = load_model(str(tiny_model_dir))
    if not mapped():
        pytest.skip("this transformers / platform does not memory-map the checkpoint")
    frozen_linears_in_bf16(model)
    assert not mapped()
    assert model.model.embed_tokens.weight.dtype == torch.float32   # what stays fp32 is still there
    assert model.model.layers[0].input_layernorm.weight.dtype == torch.float32
