"""llama.cpp's formats as torch round trips (core/ggml_formats.py), pinned against ggml itself: the library
llama-cpp-python ships quantises (ggml_quantize_chunk, the reference quantisers llama-quantize runs without an
importance matrix) and gguf-py dequantises; the per-tensor choice of q4_k_m against the types a real
llama.cpp quantisation wrote; --quant-aware-format through a run."""
import ctypes
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from core import ggml_formats
from core.errors import UnlearnError
from core.ggml_formats import block_steps, roundtrip, tensor_type, use_more_bits

gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")


def _ggml():
    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    return lib


def ggml_roundtrip(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """ggml's quantisation of `weight` (rows of its last dimension), dequantised by gguf-py."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize

    qtype = getattr(GGMLQuantizationType, kind.upper())
    rows = np.ascontiguousarray(weight.numpy().astype(np.float32))
    block, size = GGML_QUANT_SIZES[qtype]
    packed = np.zeros(rows.size // block * size, dtype=np.uint8)
    _ggml().ggml_quantize_chunk(int(qtype), rows.ctypes.data, packed.ctypes.data, 0, rows.shape[0], rows.shape[1],
                                None)
    return torch.from_numpy(dequantize(packed, qtype).reshape(rows.shape).astype(np.float32))


@pytest.fixture(scope="module")
def weight():
    torch.manual_seed(0)
    w = torch.randn(24, 1536) * 0.02
    w[3, :256] = 0.0                              # an all-zero (super-)block
    w[5, 256:512] = torch.rand(256) * 0.01        # all positive: the minimum is pinned at 0
    w[7, :32] = torch.tensor([0.03, -0.03] * 16)  # a tie for the largest |w|: the first one sets the sign
    w[9, 512:768] *= 40                           # outliers
    return w


@pytest.mark.parametrize("kind", ["q4_0", "q5_0", "q8_0"])
def test_the_simple_formats_are_ggml_s_exactly(weight, kind):
    assert torch.equal(roundtrip(weight, kind), ggml_roundtrip(weight, kind))


def _one_by_one(values: torch.Tensor) -> torch.Tensor:
    total = values[:, :1].clone()
    for column in range(1, values.shape[1]):
        total = total + values[:, column:column + 1]
    return total


@pytest.mark.parametrize("kind", ["q4_K", "q6_K"])
def test_the_k_formats_are_ggml_s_search_summed_in_its_order(weight, kind, monkeypatch):
    ours, theirs = roundtrip(weight, kind), ggml_roundtrip(weight, kind)
    # summed in torch's order a near-tie between two candidate scales can go the other way: a few sub-blocks
    # (here 98.5 % of q4_K's values and 99.7 % of q6_K's are ggml's)
    assert (ours == theirs).float().mean() >= 0.98
    step = (theirs - weight).abs().max()
    assert (ours - theirs).abs().max() <= 2 * step
    # summed one by one, as ggml's C loops do, every value is ggml's
    monkeypatch.setattr(ggml_formats, "_sum", _one_by_one)
    assert torch.equal(roundtrip(weight, kind), theirs)


@pytest.mark.parametrize("kind, per", [("q4_0", 32), ("q5_0", 32), ("q8_0", 32), ("q4_K", 16), ("q6_K", 16)])
def test_a_round_trip_with_the_steps_found_once_is_the_searched_one(weight, kind, per):
    """The quant-aware term keeps each block's steps from its forward and decodes the weight again in its
    backward without searching: the same values, from 1/32 or 1/16 as many numbers as the weight has."""
    steps = block_steps(weight, kind)
    assert sum(step.numel() for step in steps) == weight.numel() // per
    assert torch.equal(roundtrip(weight, kind, steps), roundtrip(weight, kind))


def test_the_k_formats_decode_as_ggml_writes_them_by_hand():
    """A sub-block of 32 equal positive values 0.5 beside seven all-zero sub-blocks: q4_K pins the minimum at 0,
    the search keeps scale 0.5/15 (every value the top code, no error), d = fp16(scale/63) and the 6-bit code 63:
    the value comes back as fp16(scale/63) x 63 x 15."""
    block = torch.zeros(1, 256)
    block[0, :32] = 0.5
    d = float(torch.tensor(0.5 / 15 / 63).half())
    assert roundtrip(block, "q4_K")[0, :32].tolist() == [pytest.approx(d * 63 * 15, abs=0)] * 32
    assert roundtrip(block, "q4_K")[0, 32:].abs().max() == 0


def test_the_layers_given_more_bits_are_llama_cpp_s():
    # the first and last eighth and every third between: for 30 layers, 14 of them
    assert [i for i in range(30) if use_more_bits(i, 30)] == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
    assert [i for i in range(8) if use_more_bits(i, 8)] == [0, 3, 6, 7]


@pytest.mark.parametrize("name, row, file_type, expected", [
    ("model.layers.5.self_attn.v_proj", 576, "q4_k_m", "q8_0"),      # q6_K, row not a multiple of 256
    ("model.layers.4.self_attn.v_proj", 576, "q4_k_m", "q5_0"),      # q4_K, row not a multiple of 256
    ("model.layers.5.mlp.down_proj", 1536, "q4_k_m", "q6_K"),
    ("model.layers.4.mlp.down_proj", 1536, "q4_k_m", "q4_K"),
    ("model.layers.0.self_attn.q_proj", 512, "q4_k_m", "q4_K"),
    ("base_model.model.model.layers.29.mlp.down_proj", 1536, "q4_k_m", "q6_K"),   # under LoRA
    ("model.layers.0.self_attn.q_proj", 576, "q4_0", "q4_0"),
    ("model.layers.0.self_attn.q_proj", 40, "q4_0", None),           # not in blocks of 32: left alone
])
def test_each_weight_gets_the_type_llama_cpp_gives_it(name, row, file_type, expected):
    assert tensor_type(name, row, file_type, 30) == expected


LLAMA_PARTS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}
NEOX_PARTS = {"attention.query_key_value": "attn_qkv", "attention.dense": "attn_output", "mlp.dense_h_to_4h": "ffn_up",
              "mlp.dense_4h_to_h": "ffn_down"}


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_the_q4_k_m_choice_matches_a_real_llama_cpp_quantisation(family, tokenizer, tmp_path):
    """A model of 8 layers, rows of 288 (not a multiple of 256: q4_K falls back to q5_0, q6_K to q8_0) and an
    MLP of 512 (down_proj's rows: K types), converted and quantised to q4_k_m by llama.cpp; every Linear's type
    in the file is the one quantized_kinds gives it. GPT-NeoX names its fused query-key-value and its down
    projection otherwise (attn_qkv, ffn_down in the file: q6_K on the layers given more bits, as attn_v)."""
    from gguf import GGUFReader
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    from core.quantization import quantized_kinds
    from export.formats.gguf import convert, quantize

    shared = dict(vocab_size=len(tokenizer), hidden_size=288, intermediate_size=512, num_hidden_layers=8,
                  num_attention_heads=4, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if family == "llama":
        model_class, config, parts = LlamaForCausalLM, LlamaConfig(num_key_value_heads=2, **shared), LLAMA_PARTS
    else:
        model_class, config, parts = GPTNeoXForCausalLM, GPTNeoXConfig(**shared), NEOX_PARTS
    torch.manual_seed(0)
    model = model_class(config)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    f16 = convert(tmp_path / "model", tmp_path / "model-f16.gguf")
    quantize(f16, tmp_path / "model-q4_k_m.gguf", "q4_k_m")
    written = {t.name: t.tensor_type.name for t in GGUFReader(tmp_path / "model-q4_k_m.gguf").tensors}
    names = {id(m): n for n, m in model.named_modules()}
    ours = {}
    for module, kind in quantized_kinds(model, "q4_k_m").items():
        _, _, layer, part = names[id(module)].split(".", 3)
        ours[f"blk.{layer}.{parts[part]}.weight"] = kind.upper()
    assert len(ours) == 8 * len(parts) and {name: written[name] for name in ours} == ours
    assert {"Q4_K", "Q6_K", "Q5_0", "Q8_0"} == set(ours.values())


def test_the_format_is_validated_and_a_flag(tiny_config):
    with pytest.raises(UnlearnError, match="quant_aware_format"):
        replace(tiny_config, quant_aware=1.0, quant_aware_format="q3_k").validate()
    replace(tiny_config, quant_aware=1.0, quant_aware_format="q4_k_m").validate()
    replace(tiny_config, quant_aware=1.0, quant_aware_format="q4_0,q4_k_m").validate()   # both files
    for wrong, named in (("q4_0,q4_0", "'q4_0' twice"), ("q4_0,q3_k", "an unknown file type 'q3_k'"),
                         ("q4_0,", "an unknown file type ''")):
        with pytest.raises(UnlearnError, match=f"quant_aware_format .* names {named}"):
            replace(tiny_config, quant_aware=1.0, quant_aware_format=wrong).validate()
    from core.cli import build_parser

    args = build_parser().parse_args(["train", "--method", "npo", "--forget", "f.jsonl", "--out", "o",
                                      "--quant-aware", "1", "--quant-aware-format", "q4_k_m"])
    assert args.quant_aware_format == "q4_k_m"
