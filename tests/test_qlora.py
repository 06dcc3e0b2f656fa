"""QLoRA: the frozen base quantised by bitsandbytes (4-bit nf4 or 8-bit), a LoRA adapter trained on it, on the
CPU. The tiny model (32 wide, 64-wide MLP) quantises: bitsandbytes packs any Linear whose size is even.

One finished 4-bit run (module fixture) serves the checks of the run, its evaluation and its export; resume
and the refusals use their own short runs."""
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from conftest import StopAfter, quiet
from core.config import UnlearnConfig
from core.errors import UnlearnError
from core.runs import RunDir
from core.trainer import Trainer, train

bnb = pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def qlora_config(tiny_model_dir, tmp_path_factory) -> UnlearnConfig:
    from conftest import write_qa_files

    root = tmp_path_factory.mktemp("qlora")
    files = write_qa_files(root, 8, 8)
    return UnlearnConfig(model=str(tiny_model_dir), method="npo_rt", forget=str(files["forget"]),
                         retain=str(files["retain"]), out=str(root / "run"), max_steps=4, batch_size=4, lr=1e-2,
                         save_steps=0, eval_examples=8, device="cpu", lora=True, lora_r=4, load_in_4bit=True)


@pytest.fixture(scope="module")
def qlora_run(qlora_config):
    return train(qlora_config, **quiet())


def test_the_base_trains_frozen_in_4bit_and_forgetting_rises(qlora_config, qlora_run):
    assert qlora_run.state == "finished"
    assert qlora_run.summary["after"]["forget_nll"] > qlora_run.summary["before"]["forget_nll"] + 0.05
    trainer = Trainer(replace(qlora_config, out=qlora_config.out + "-probe"), show_progress=False, log=lambda m: None)
    model = trainer._load_model(str(qlora_config.model))
    linears = [m for name, m in model.named_modules() if name.endswith(("q_proj", "down_proj")) and hasattr(m, "base_layer")]
    assert linears and all(isinstance(m.base_layer, bnb.nn.Linear4bit) for m in linears)
    assert all(m.base_layer.weight.dtype == torch.uint8 for m in linears)   # packed nf4
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {n for n, _ in model.named_parameters() if "lora_" in n}
    run = RunDir(qlora_run.run_dir)
    assert run.final_model_kind() == "adapter" and run.config()["load_in_4bit"] is True


def test_an_eval_forward_leaves_the_4bit_layout_as_quantised(tiny_model_dir):
    """bitsandbytes would repack each 4-bit weight for its AVX512-BF16 kernel on the first no-grad eval forward:
    on the tiny model's 32-wide layers (narrower than a 64 block) that fails, and dequantising misreads it."""
    from core.models import load_quantized_model

    model = load_quantized_model(str(tiny_model_dir), 4, torch.device("cpu")).eval()
    before = {name: m.weight.detach().clone() for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    with torch.no_grad():
        model(torch.tensor([[1, 5, 9, 200]]))
    after = {name: m.weight for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert before and all(torch.equal(before[name], after[name]) for name in before)
    assert not any(getattr(w.quant_state, "packing_format_for_cpu", False) for w in after.values())


def test_a_stopped_run_resumes_exactly(qlora_config, tmp_path):
    assert train(replace(qlora_config, out=str(tmp_path / "straight")), **quiet()).state == "finished"
    stopped = replace(qlora_config, out=str(tmp_path / "stopped"))
    assert train(stopped, **quiet(stop_event=StopAfter(2))).state == "stopped"
    checkpoint = RunDir(stopped.out).latest_checkpoint()
    assert all("lora_" in name for name in load_file(str(checkpoint / "trainable.safetensors")))   # the adapter only
    assert train(replace(stopped, resume=True), **quiet()).step == 4
    ours, theirs = (load_file(str(tmp_path / name / "model" / "adapter_model.safetensors")) for name in ("stopped", "straight"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_evaluation_opens_the_adapter_merged_into_the_dequantised_base(qlora_run):
    from core.models import open_model

    loaded = open_model(qlora_run.run_dir, device="cpu", dtype="float32")
    assert not any(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in loaded.model.modules())
    assert loaded.dtype == "float32"
    in_bf16 = open_model(qlora_run.run_dir, device="cpu", dtype="bfloat16").model   # what `auto` opens on AVX512-BF16
    assert {p.dtype for p in in_bf16.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        logits = in_bf16(torch.tensor([[1, 5, 9, 200]])).logits
    assert torch.isfinite(logits).all()


def test_export_merges_into_the_dequantised_base_and_loads_in_plain_transformers(qlora_run, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from core.models import load_dequantized_model
    from export.bundle import export_run

    manifest = export_run(qlora_run.run_dir, tmp_path / "bundle", formats=("hf",), parity_examples=1, log=lambda m: None)
    assert manifest["source_run"]["base_quantization"].startswith("4-bit nf4")
    assert "held in 4-bit nf4" in (tmp_path / "bundle" / "README.md").read_text()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "bundle" / manifest["artifacts"]["hf"]["path"]).eval()
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    # the adapter on the 4-bit weights dequantised to fp32 (the 4-bit layers themselves compute in bf16 on a
    # CPU with AVX512-BF16, ~2e-3 off in logits)
    adapted = PeftModel.from_pretrained(load_dequantized_model(str(tiny_model_dir), 4),
                                        str(RunDir(qlora_run.run_dir).model_dir)).eval()
    ids = torch.tensor([[1, 5, 9, 200, 31, 7]])
    with torch.no_grad():
        expected, got = adapted(ids).logits, merged(ids).logits
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():   # the merge is into the dequantised base, not the original: they differ
        assert not torch.allclose(original(ids).logits, got, atol=1e-4)


def test_8bit_base_trains_too(qlora_config, tmp_path):
    result = train(replace(qlora_config, load_in_4bit=False, load_in_8bit=True, max_steps=2,
                           out=str(tmp_path / "run8")), **quiet())
    assert result.state == "finished"
    assert result.summary["after"]["forget_nll"] > result.summary["before"]["forget_nll"]


@pytest.mark.parametrize("change, message, fix", [
    ({"lora": False}, "only a LoRA adapter can train", "add --lora"),
    ({"load_in_8bit": True}, "--load-in-4bit and --load-in-8bit contradict", "only one"),
    ({"quant_aware": 1.0}, "--quant-aware fake-quantises the full-precision weights", "drop --quant-aware"),
    ({"method": "mudman", "lora_targets": "gate_proj"}, "keeps its own copy of the model (adversary)",
     "choose another method"),
])
def test_what_a_quantised_base_cannot_do_is_refused_before_loading(qlora_config, tmp_path, monkeypatch, change,
                                                                    message, fix):
    monkeypatch.setattr("core.trainer.load_quantized_model", _no_loading)
    with pytest.raises(UnlearnError, match=message.replace("(", r"\(").replace(")", r"\)")) as raised:
        train(replace(qlora_config, out=str(tmp_path / "run"), **change), **quiet())
    assert fix in raised.value.fix


def test_a_device_bitsandbytes_does_not_run_on_is_refused(qlora_config, tmp_path, monkeypatch):
    monkeypatch.setattr(bnb, "supported_torch_devices", {"cuda"})
    monkeypatch.setattr("core.trainer.load_quantized_model", _no_loading)
    with pytest.raises(UnlearnError, match="cannot run a 4-bit model on cpu") as raised:
        train(replace(qlora_config, out=str(tmp_path / "run")), **quiet())
    assert "--device cuda" in raised.value.fix


def test_sharding_a_quantised_base_is_refused():
    from core.models import check_quantized_base

    with pytest.raises(UnlearnError, match="cannot be sharded by FSDP"):
        check_quantized_base(4, torch.device("cpu"), "FSDP")
    check_quantized_base(4, torch.device("cpu"), "MULTI_CPU")   # DDP: a whole quantised copy per process


def _no_loading(*args, **kwargs):
    raise AssertionError("the refusal must come before the model loads")


@pytest.mark.bundled
@pytest.mark.slow   # ~300 s on 2 cores: bitsandbytes dequantises every 4-bit weight at each CPU matmul
def test_a_few_qlora_steps_on_the_bundled_model(tmp_path):
    from conftest import write_qa_files

    files = write_qa_files(tmp_path, 4, 4)
    result = train(UnlearnConfig(model="bundled", method="npo_rt", forget=str(files["forget"]),
                                 retain=str(files["retain"]), out=str(tmp_path / "run"), max_steps=2, batch_size=2,
                                 lr=1e-3, save_steps=0, eval_examples=4, device="cpu", lora=True, load_in_4bit=True),
                   **quiet())
    assert result.summary["after"]["forget_nll"] > result.summary["before"]["forget_nll"]


def test_bitsandbytes_lines_that_need_no_action_are_dropped_and_the_others_kept(caplog):
    import logging
    import subprocess
    import sys

    from core.models import BITSANDBYTES_NOISE, quiet_bitsandbytes

    quiet_bitsandbytes()
    for name, words in BITSANDBYTES_NOISE.items():
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=name):
            logging.getLogger(name).warning(f"{words} here")
            logging.getLogger(name).warning("anything else")
        assert [r.getMessage() for r in caplog.records] == ["anything else"]
    # the import itself, in a fresh interpreter (on an AVX512-BF16 CPU it tries a hub kernel and says so), by
    # way of peft, which imports bitsandbytes: any LoRA run or audit printed the line before core.models filtered
    # it at import
    for imports in ("import core.models, bitsandbytes", "import core.models, peft"):
        imported = subprocess.run([sys.executable, "-c", imports], capture_output=True, text=True, check=True)
        assert "gemm_4bit_forward" not in imported.stderr + imported.stdout, imports
