"""Quantisation-aware forgetting (--quant-aware): q4_0 fake quantisation pinned by hand against ggml's rule,
its straight-through gradient, the context that swaps every Linear's weight (LoRA: the merged weight), the
forget-only re-run of a method's terms, and a real run on the tiny model."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import build_tiny_model, quiet
from core.errors import UnlearnError
from core.ggml_formats import roundtrip
from core.quantization import FakeQuantizer, quant_aware_terms, quantized_modules


def q4_0_roundtrip(weight: torch.Tensor) -> torch.Tensor:
    """dequantise(quantise(weight)) by ggml's q4_0 reference rule (core/ggml_formats.py)."""
    return roundtrip(weight, "q4_0")


def fake_quantize(weight: torch.Tensor, kind: str = "q4_0") -> torch.Tensor:
    """The straight-through estimator written out: the round trip in the forward, the identity in the backward.
    The term's layer (_StraightThroughLinear) must give the gradients this gives."""
    return weight + (roundtrip(weight, kind) - weight).detach()


def ggml_q4_0(row: list[float]) -> list[float]:
    """quantize_row_q4_0_ref then dequantize_row_q4_0, written out scalar by scalar in float32."""
    out = []
    for start in range(0, len(row), 32):
        block = [np.float32(v) for v in row[start:start + 32]]
        amax, signed_max = np.float32(0), np.float32(0)
        for v in block:
            if amax < abs(v):
                amax, signed_max = abs(v), v
        d = np.float32(signed_max / np.float32(-8))
        inverse = np.float32(1) / d if d else np.float32(0)
        stored = np.float32(np.float16(d))
        for v in block:
            q = min(15, int(np.float32(v * inverse) + np.float32(8.5)))
            out.append(float(np.float32(q - 8) * stored))
    return out


def test_the_roundtrip_follows_the_q4_0_reference_rule():
    torch.manual_seed(0)
    weight = torch.randn(3, 64) * 0.05
    weight[1, 32:] = 0.0                      # an all-zero block: scale 0
    weight[2, :32] = torch.tensor([0.3, -0.3] * 16)   # a tie: the first (positive) one sets the sign
    expected = torch.tensor([ggml_q4_0(row.tolist()) for row in weight])
    assert torch.equal(q4_0_roundtrip(weight), expected)


def test_hand_computed_block():
    """Largest |w| is -4 (first of the ±4 tie): d = -4 / -8 = 0.5, 1/d = 2, q = min(15, floor(2w + 8.5))."""
    block = torch.zeros(1, 32)
    block[0, :6] = torch.tensor([-4.0, 4.0, 1.0, 0.25, -0.25, 0.7])
    got = q4_0_roundtrip(block)[0, :6].tolist()
    # -4 -> q 0 -> -8·0.5; 4 -> 16.5 clamped to 15 -> 7·0.5; 1 -> 10 -> 1; 0.25 -> 9.0 -> 9 (half goes up)
    # -> 0.5; -0.25 -> 8.0 -> 0; 0.7 -> floor(9.9) = 9 -> 0.5
    assert got == [-4.0, 3.5, 1.0, 0.5, 0.0, 0.5]


def test_the_scale_is_stored_in_fp16():
    block = torch.full((1, 32), 0.0)
    block[0, 0] = -0.1                       # d = 0.0125, not exact in fp16
    d16 = float(torch.tensor(0.0125).half())
    assert q4_0_roundtrip(block)[0, 0].item() == pytest.approx(-8 * d16, abs=0)
    assert d16 != 0.0125


def test_straight_through_gradient_is_the_identity():
    """A Linear runs on Q(W) in the forward; its weight's gradient is the one Q(W) gets (dL/dy)ᵀ x, as if Q were
    the identity, and its input's is (dL/dy) Q(W)."""
    torch.manual_seed(1)
    layer = torch.nn.Linear(32, 2, bias=False)
    x, upstream = torch.randn(3, 32, requires_grad=True), torch.randn(3, 2)
    with FakeQuantizer(torch.nn.Sequential(layer)):
        out = layer(x)
    quantized = q4_0_roundtrip(layer.weight)
    assert torch.allclose(out, x @ quantized.T) and not torch.allclose(out, layer(x))
    (out * upstream).sum().backward()
    assert torch.allclose(layer.weight.grad, upstream.T @ x) and torch.allclose(x.grad, upstream @ quantized)


def test_every_linear_but_the_head_runs_quantised_inside_the_context_only(tokenizer):
    model = build_tiny_model(tokenizer)
    modules = quantized_modules(model)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert model.lm_head not in modules and set(modules) == set(linears) - {model.lm_head}
    layer = model.model.layers[0].mlp.down_proj            # [32, 64]: two blocks per row
    x = torch.randn(3, 64)
    plain = layer(x)
    with FakeQuantizer(model):
        inside = layer(x)
    assert torch.allclose(inside, F.linear(x, q4_0_roundtrip(layer.weight)))
    assert not torch.allclose(inside, plain)
    assert torch.equal(layer(x), plain) and "forward" not in layer.__dict__


def saved_bytes(forward) -> dict[int, int]:
    """{storage address: bytes} of every tensor autograd keeps for the backward of `forward()`."""
    kept = {}

    def pack(tensor):
        kept[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return kept


def test_the_quantised_forward_keeps_no_copy_of_the_weights_and_its_gradient_is_straight_through(tokenizer):
    """A kept Q(W) was a 4-byte copy of every quantised weight until the term's backward (405 MiB on
    SmolLM2-135M): the backward quantises W again instead, with the blocks' steps found in the forward. The
    gradients are those of x · (W + (Q(W) - W) detached)ᵀ + b, the straight-through estimator written out;
    parameters, held anyway, are left out of the bytes kept."""
    from core.quantization import quantized_kinds

    model = build_tiny_model(tokenizer)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    ids = torch.randint(0, 100, (2, 12))

    def kept_bytes():
        return sum(n for ptr, n in saved_bytes(lambda: model(ids).logits.sum()).items() if ptr not in params)

    plain = kept_bytes()
    weights = sum(module.weight.numel() * 4 for module in quantized_kinds(model, "q4_k_m"))
    with FakeQuantizer(model, "q4_k_m"):
        assert 0 < kept_bytes() - plain <= weights / 16      # the blocks' steps (fp32, one per 16 or 32 weights)
    layer = model.model.layers[0].mlp.down_proj
    layer.bias = torch.nn.Parameter(torch.randn(32) * 0.1)      # a bias's gradient too
    x, upstream = torch.randn(2, 3, 64, requires_grad=True), torch.randn(2, 3, 32)
    with FakeQuantizer(model, "q4_k_m"):
        (layer(x) * upstream).sum().backward()
    ours = x.grad, layer.weight.grad, layer.bias.grad
    x.grad = layer.weight.grad = layer.bias.grad = None
    kind = quantized_kinds(model, "q4_k_m")[layer]
    (F.linear(x, fake_quantize(layer.weight, kind), layer.bias) * upstream).sum().backward()
    for mine, written_out in zip(ours, (x.grad, layer.weight.grad, layer.bias.grad)):
        assert torch.allclose(mine, written_out, atol=1e-6)


def test_under_lora_the_merged_weight_is_quantised_and_the_adapter_gets_the_gradient(tokenizer):
    from core.models import add_lora

    model = add_lora(build_tiny_model(tokenizer), 4, 8, 0.0, "all-linear")
    layer = model.base_model.model.model.layers[0].mlp.gate_proj
    torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.5)   # B starts at 0: give the adapter a say
    merged = (layer.base_layer.weight + layer.get_delta_weight("default")).detach()
    x = torch.randn(2, 32)
    quantizer = FakeQuantizer(model)
    with quantizer:
        out = layer(x)
        with model.disable_adapter():                # the original under LoRA: full precision, base only
            assert torch.equal(layer(x), F.linear(x, layer.base_layer.weight))
        with quantizer.paused():
            assert torch.allclose(layer(x), F.linear(x, merged), atol=1e-6)
    assert torch.allclose(out, F.linear(x, q4_0_roundtrip(merged)), atol=1e-6)
    out.sum().backward()
    adapter = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert adapter[0].grad.abs().sum() > 0 and adapter[1].grad.abs().sum() > 0
    assert layer.base_layer.weight.grad is None   # frozen
    ours = [p.grad.clone() for p in adapter]
    for p in adapter:
        p.grad = None
    written_out = fake_quantize(layer.base_layer.weight + layer.get_delta_weight("default"))   # straight through
    F.linear(x, written_out).sum().backward()
    assert all(torch.allclose(mine, p.grad, atol=1e-6) for mine, p in zip(ours, adapter))


def forget_batch(tokenizer, n=4):
    from core.data import pad_batch
    from core.evaluation.probes import encode_pairs

    pairs = [(f"Who wrote book {i}?", f"Book {i} was written by Zorblat Quenfeather.") for i in range(n)]
    part = pad_batch(encode_pairs(tokenizer, pairs), tokenizer.pad_token_id)
    part["ref_nll"] = torch.full((n,), 40.0)
    retain = pad_batch(encode_pairs(tokenizer, [(f"What is {i}+{i}?", f"{2 * i}.") for i in range(n)]),
                       tokenizer.pad_token_id)
    retain["ref_nll"] = torch.full((n,), 5.0)
    return {"forget": part, "retain": retain}


def test_only_the_forget_terms_are_run_again_and_nothing_else_is_forwarded(tokenizer):
    from core.losses import npo_loss, sequence_nll
    from core.methods import StepInputs, get_method
    from core.scoring import forward_logits

    model = build_tiny_model(tokenizer)
    batch = forget_batch(tokenizer)
    pdu = get_method("pdu")(get_method("pdu").resolve_params({}))
    names = [name for name, _ in quant_aware_terms(pdu, StepInputs(model, batch), 2.0)]
    assert names == ["quant_forget_flatten"] and pdu.violations == []   # its retain part never ran

    npo_rt = get_method("npo_rt")(get_method("npo_rt").resolve_params({"beta": 0.1}))
    (name, term), = list(quant_aware_terms(npo_rt, StepInputs(model, batch), 2.0))
    with FakeQuantizer(model):
        nll, _ = sequence_nll(*forward_logits(model, batch["forget"]))
    assert name == "quant_forget_npo"
    assert torch.allclose(term, 2.0 * npo_loss(nll, batch["forget"]["ref_nll"], 0.1))


def test_several_file_types_take_one_term_each_as_the_single_ones_would(tokenizer):
    """--quant-aware-format q4_0,q4_k_m: a model shipped in both files gets both terms, each the one a run
    against that file alone takes (each term protects only the file it simulates: docs/results/robust.md)."""
    from core.methods import StepInputs, get_method

    model = build_tiny_model(tokenizer)
    batch = forget_batch(tokenizer)
    npo_rt = get_method("npo_rt")(get_method("npo_rt").resolve_params({"beta": 0.1}))
    alone = {kind: term for kind in ("q4_0", "q4_k_m")
             for (_, term), in [list(quant_aware_terms(npo_rt, StepInputs(model, batch), 2.0, kind))]}
    assert not torch.allclose(alone["q4_0"], alone["q4_k_m"])     # the two files differ on this model
    both = dict(quant_aware_terms(npo_rt, StepInputs(model, batch), 2.0, "q4_0,q4_k_m"))
    assert list(both) == ["quant_q4_0_forget_npo", "quant_q4_k_m_forget_npo"]
    for kind, term in alone.items():
        assert torch.allclose(both[f"quant_{kind}_forget_npo"], term)


def test_quant_aware_is_validated_and_a_flag():
    from core.cli import build_parser
    from core.config import UnlearnConfig

    with pytest.raises(UnlearnError, match="quant_aware"):
        UnlearnConfig(forget="x", quant_aware=-1.0).validate()
    args = build_parser().parse_args(["train", "--forget", "f.jsonl", "--quant-aware", "0.5"])
    assert args.quant_aware == 0.5


def quantized_forget_nll(model, tokenizer) -> tuple[float, float]:
    """Token-mean forget NLL of the model, plain and q4_0 fake-quantised."""
    from core.evaluation.probes import answer_nll

    pairs = [(f"Who wrote book number {i}?", f"Book {i} was written by Zorblat Quenfeather.") for i in range(8)]
    def mean(sums, counts):
        return sum(sums) / sum(counts)
    plain = mean(*answer_nll(model, tokenizer, pairs))
    with FakeQuantizer(model):
        quantized = mean(*answer_nll(model, tokenizer, pairs))
    return plain, quantized


@pytest.mark.parametrize("lora", [False, True])
def test_a_run_raises_the_forget_nll_of_the_quantised_model_too(tiny_config, tiny_model_dir, tokenizer, lora):
    from transformers import AutoModelForCausalLM

    from core.models import load_run_model
    from core.runs import RunDir
    from core.trainer import train

    config = replace(tiny_config, quant_aware=1.0, lora=lora, lr=1e-2 if lora else 1e-3)
    result = train(config, **quiet())
    rows = [json.loads(line) for line in RunDir(result.run_dir).metrics_path.read_text().splitlines()]
    assert all("loss_quant_forget_npo" in row for row in rows)
    before = quantized_forget_nll(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer)
    after = quantized_forget_nll(load_run_model(result.run_dir), tokenizer)
    assert after[0] > before[0] + 0.1 and after[1] > before[1] + 0.1   # plain and quantised both rose


def test_under_q4_k_m_each_linear_runs_on_the_format_llama_cpp_gives_it(tokenizer, tiny_config):
    """The tiny model's rows (32 and 64 wide) are not multiples of 256: under q4_k_m llama.cpp stores q4_K
    weights as q5_0 and q6_K ones (v and down in the layers given more bits) as q8_0; a run takes the term."""
    from core.quantization import quantized_kinds
    from core.trainer import train

    model = build_tiny_model(tokenizer)
    kinds = quantized_kinds(model, "q4_k_m")
    layers = model.model.layers
    assert kinds[layers[0].self_attn.q_proj] == "q5_0" and kinds[layers[1].mlp.down_proj] == "q8_0"
    from core.models import add_lora

    adapted = add_lora(build_tiny_model(tokenizer), 4, 8, 0.0, "all-linear")   # the layer count read through peft
    under_lora = {name: kind for module, kind in quantized_kinds(adapted, "q4_k_m").items()
                  for name, m in adapted.named_modules() if m is module}
    assert under_lora["base_model.model.model.layers.1.mlp.down_proj"] == "q8_0" and len(under_lora) == 14
    layer, x = layers[0].mlp.up_proj, torch.randn(3, 32)
    with FakeQuantizer(model, "q4_k_m"):
        inside = layer(x)
    assert torch.allclose(inside, F.linear(x, roundtrip(layer.weight, kinds[layer])))
    assert not torch.allclose(inside, F.linear(x, q4_0_roundtrip(layer.weight)))
    from core.runs import RunDir

    result = train(replace(tiny_config, quant_aware=1.0, quant_aware_format="q4_k_m", max_steps=2), **quiet())
    rows = [json.loads(line) for line in RunDir(result.run_dir).metrics_path.read_text().splitlines()]
    assert all("loss_quant_forget_npo" in row for row in rows)
