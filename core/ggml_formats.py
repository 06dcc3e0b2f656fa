"""llama.cpp's quantisation formats as torch round trips (dequantise(quantise(w))), and the format llama.cpp
gives each weight of a model under a file type, for the quantisation-aware term (core/quantization.py).

Each round trip follows ggml's reference quantiser (`quantize_row_<type>_ref`, what `llama-quantize` runs
without an importance matrix), per row of an [out, in] Linear weight in blocks along the input features:
- q4_0 / q5_0 (blocks of 32): d = (the element of largest |w|, sign kept) / -8 (-16); q = min(15 (31),
  floor(w/d + 8.5 (16.5))); w ≈ (q - 8 (16)) x fp16(d).
- q8_0 (blocks of 32): d = max|w| / 127, q = round(w/d); w ≈ q x fp16(d).
- q4_K (super-blocks of 256, eight sub-blocks of 32): each sub-block's scale and minimum are searched
  (`make_qkx2_quants`: 21 candidate scales, weighted least squares, weights av|w| + |w|), both quantised to
  6 bits against the super-block's largest (kept in fp16); w ≈ d·sc·q - dmin·m, q in 0..15.
- q6_K (super-blocks of 256, sixteen sub-blocks of 16): each sub-block's scale searched (`make_qx_quants`,
  weights w², 19 candidates), quantised to 8 bits against the largest; w ≈ d·sc·q, q in -32..31.
Rounding is ggml's `nearest_int` (half to even, as torch.round). The searches sum in torch's order, not C's
one by one: a near-tie between two candidate scales can go the other way, which moves a sub-block by less
than one step (tests/test_quant_formats.py measures the agreement with ggml itself).

The file type's choice (`gguf_types`) is llama.cpp's `llama_tensor_get_type` for llama-style names (q/k/v/o
projections, gate/up/down): q4_0 puts every weight in q4_0; q4_k_m gives q6_K to v and down in the layers
`use_more_bits` picks (the first and last eighth, every third between) and q4_K to the rest, and a K-type
weight whose row is not a multiple of 256 falls back (q4_K -> q5_0, q6_K -> q8_0). On SmolLM2-135M (rows of
576) q4_k_m is thus mostly q5_0: every projection but down, whose rows are 1536 long.
"""
from __future__ import annotations

import re
from functools import partial

import torch

QK = 32          # block of the simple formats
QK_K = 256       # super-block of the K formats
FALLBACK = {"q4_K": "q5_0", "q6_K": "q8_0"}   # llama.cpp's type for a K-type row not a multiple of 256


def _sum(values: torch.Tensor) -> torch.Tensor:
    """Each row's sum [S, 1]: the searches' sums (torch's order; tests swap in C's one by one)."""
    return values.sum(1, keepdim=True)


def _fp16(x: torch.Tensor) -> torch.Tensor:
    return x.half().float()


def _signed_largest(blocks: torch.Tensor) -> torch.Tensor:
    """Each block's element of largest |w| with its sign (the first one on ties, as ggml's strict `<`)."""
    return blocks.gather(1, blocks.abs().argmax(dim=1, keepdim=True))


def _offset_binary_scale(weight: torch.Tensor, levels: int) -> tuple[torch.Tensor]:
    """q4_0 (levels 16) and q5_0 (32): each block's d = signed max / -(levels/2)."""
    return (_signed_largest(weight.reshape(-1, QK)) / -(levels // 2),)


def _offset_binary(weight: torch.Tensor, scale: torch.Tensor, levels: int) -> torch.Tensor:
    """q = min(levels-1, floor(w/d + levels/2 + .5)); w ≈ (q - levels/2) x fp16(d)."""
    half = levels // 2
    inverse = torch.where(scale != 0, 1.0 / scale, torch.zeros_like(scale))
    codes = torch.floor(weight.reshape(-1, QK) * inverse + (half + 0.5)).clamp(0, levels - 1)   # ggml truncates
    return (codes - half) * _fp16(scale)


def _q8_0_scale(weight: torch.Tensor) -> tuple[torch.Tensor]:
    return (weight.reshape(-1, QK).abs().amax(dim=1, keepdim=True) / 127,)


def _q8_0(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    inverse = torch.where(scale != 0, 1.0 / scale, torch.zeros_like(scale))
    scaled = weight.reshape(-1, QK) * inverse
    return torch.sign(scaled) * torch.floor(scaled.abs() + 0.5) * _fp16(scale)   # roundf: half away from 0


def _scale_and_min(x: torch.Tensor, nmax: int = 15, rmin: float = -1.0, rdelta: float = 0.1,
                   nstep: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qkx2_quants over rows of `x` [S, n]: (scale, min as a positive offset), each [S, 1];
    w ≈ scale·q - min."""
    mean_square = _sum(x * x) / x.shape[1]
    weights = mean_square.sqrt() + x.abs()
    low = x.amin(1, keepdim=True).clamp(max=0)
    high = x.amax(1, keepdim=True)
    span = high - low
    flat = span == 0
    span = torch.where(flat, torch.ones_like(span), span)
    sum_w, sum_x = _sum(weights), _sum(weights * x)

    def codes(iscale, minimum):
        return torch.round(iscale * (x - minimum)).clamp(0, nmax)

    def error(scale, minimum, q):
        return _sum(weights * (scale * q + minimum - x) ** 2)

    iscale = nmax / span
    scale, minimum = 1 / iscale, low
    best = error(scale, minimum, codes(iscale, low))
    start, delta = torch.tensor(rmin, dtype=torch.float32), torch.tensor(rdelta, dtype=torch.float32)
    for step in range(nstep + 1):
        # as ggml, each candidate is taken from the best minimum so far (the search walks, it is not a grid)
        reach = torch.where(flat, torch.ones_like(span), high - minimum)
        q = codes((start + delta * step + nmax) / reach, minimum)
        sum_l, sum_l2, sum_xl = _sum(weights * q), _sum(weights * q * q), _sum(weights * q * x)
        det = sum_w * sum_l2 - sum_l * sum_l
        solvable = det > 0
        det = torch.where(solvable, det, torch.ones_like(det))
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
        positive = this_min > 0          # a minimum above 0 is pinned at 0, the scale refitted alone
        this_scale = torch.where(positive, sum_xl / torch.where(sum_l2 > 0, sum_l2, torch.ones_like(sum_l2)),
                                 this_scale)
        this_min = torch.where(positive, torch.zeros_like(this_min), this_min)
        current = error(this_scale, this_min, q)
        better = solvable & (current < best)
        best = torch.where(better, current, best)
        scale, minimum = torch.where(better, this_scale, scale), torch.where(better, this_min, minimum)
    return torch.where(flat, torch.zeros_like(scale), scale), -minimum


def _six_bit(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, 8] sub-block values (>= 0) quantised to 6 bits against their largest: (fp16 step [B, 1], codes)."""
    largest = values.amax(1, keepdim=True)
    inverse = torch.where(largest > 0, 63 / largest, torch.zeros_like(largest))
    return _fp16(largest / 63), torch.round(inverse * values).clamp(max=63)


def _q4_K_scales(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sub-block of 32's step d and offset, the searched scale and minimum quantised to 6 bits."""
    scales, mins = _scale_and_min(weight.reshape(-1, 32))
    step, scale_codes = _six_bit(scales.reshape(-1, QK_K // 32))
    min_step, min_codes = _six_bit(mins.reshape(-1, QK_K // 32))
    return (step * scale_codes).reshape(-1, 1), (min_step * min_codes).reshape(-1, 1)


def _q4_K(weight: torch.Tensor, d: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    subs = weight.reshape(-1, 32)
    safe = torch.where(d != 0, d, torch.ones_like(d))
    codes = torch.round((subs + offset) / safe).clamp(0, 15)
    # a sub-block whose scale quantised to 0 decodes to -offset whatever its codes
    return torch.where(d != 0, d * codes - offset, -offset.expand_as(subs))


def _signed_scale(x: torch.Tensor, nmax: int = 32) -> torch.Tensor:
    """make_qx_quants with rmse_type 1 over rows of `x` [S, n]: the scale (w ≈ scale·q, q in -nmax..nmax-1)."""
    largest = _signed_largest(x)
    tiny = largest.abs() < 1e-15
    largest = torch.where(tiny, torch.ones_like(largest), largest)
    weights = x * x

    def fit(iscale):
        q = torch.round(iscale * x).clamp(-nmax, nmax - 1)
        return _sum(weights * x * q), _sum(weights * q * q)

    sum_lx, sum_l2 = fit(-nmax / largest)
    scale = torch.where(sum_l2 > 0, sum_lx / torch.where(sum_l2 > 0, sum_l2, torch.ones_like(sum_l2)),
                        torch.zeros_like(sum_l2))
    best = scale * sum_lx
    for step in [s for s in range(-9, 10) if s != 0]:
        sum_lx, sum_l2 = fit(-(nmax + 0.1 * step) / largest)
        better = (sum_l2 > 0) & (sum_lx * sum_lx > best * sum_l2)
        new_scale = sum_lx / torch.where(sum_l2 > 0, sum_l2, torch.ones_like(sum_l2))
        scale = torch.where(better, new_scale, scale)
        best = torch.where(better, new_scale * sum_lx, best)
    return torch.where(tiny, torch.zeros_like(scale), scale)


def _q6_K_scale(weight: torch.Tensor) -> tuple[torch.Tensor]:
    """Each sub-block of 16's step d: the searched scale quantised to 8 bits against the super-block's largest."""
    scales = _signed_scale(weight.reshape(-1, 16)).reshape(-1, QK_K // 16)
    largest = _signed_largest(scales)
    empty = largest.abs() < 1e-15
    inverse = -128 / torch.where(empty, torch.ones_like(largest), largest)
    step = _fp16(1 / inverse)
    codes_of_scales = torch.round(inverse * scales).clamp(max=127)
    return (torch.where(empty, torch.zeros_like(step), step * codes_of_scales).reshape(-1, 1),)


def _q6_K(weight: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    subs = weight.reshape(-1, 16)
    safe = torch.where(d != 0, d, torch.ones_like(d))
    codes = torch.round(subs / safe).clamp(-32, 31)
    return torch.where(d != 0, d * codes, torch.zeros_like(subs))


# Each format as (the search: its per-block steps and offsets from the weight, the costly part of the K formats;
# the round trip given those). The quant-aware term keeps the steps from its forward for its backward.
FORMATS = {"q4_0": (partial(_offset_binary_scale, levels=16), partial(_offset_binary, levels=16)),
           "q5_0": (partial(_offset_binary_scale, levels=32), partial(_offset_binary, levels=32)),
           "q8_0": (_q8_0_scale, _q8_0), "q4_K": (_q4_K_scales, _q4_K), "q6_K": (_q6_K_scale, _q6_K)}
FILE_TYPES = ("q4_0", "q4_k_m")   # what --quant-aware-format names: a llama.cpp file type


def file_types(spec: str) -> tuple[str, ...]:
    """The file types a --quant-aware-format value names: one, or several separated by commas ("q4_0,q4_k_m":
    one term per file, for a model shipped in both)."""
    return tuple(part.strip() for part in spec.split(","))


def block_steps(weight: torch.Tensor, kind: str) -> tuple[torch.Tensor, ...]:
    """The per-block steps (and offsets) format `kind` finds for `weight`: 1/32 (q4_0, q5_0, q8_0) or 1/16 (q4_K,
    q6_K) as many numbers as it has."""
    search, _ = FORMATS[kind]
    return search(weight.detach().float())


def roundtrip(weight: torch.Tensor, kind: str, steps: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    """dequantise(quantise(weight)) in format `kind`, computed in fp32, returned in weight's dtype; with the
    `steps` block_steps found for this same weight, without searching again."""
    _, decode = FORMATS[kind]
    steps = block_steps(weight, kind) if steps is None else steps
    return decode(weight.detach().float(), *steps).reshape(weight.shape).to(weight.dtype)


def use_more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's layers that get more bits under the _M types: the first and last eighth, every third between."""
    eighth = layers // 8
    return layer < eighth or layer >= 7 * layers // 8 or (layer - eighth) % 3 == 2


_LAYER = re.compile(r"\blayers?\.(\d+)\.|\bh\.(\d+)\.|\bblocks?\.(\d+)\.")
# The Linear weights llama.cpp's _M types give q6_K on those layers: the Hugging Face names its converter turns
# into attn_v, attn_qkv (a fused query-key-value) and ffn_down tensors. Pinned against real q4_k_m files of a
# Llama (v_proj, down_proj; Qwen2, Mistral and Gemma name them alike) and a GPT-NeoX (query_key_value,
# dense_4h_to_h: before, every layer of theirs read q4_K) in tests/test_quant_formats.py; Phi-3's qkv_proj,
# MPT's Wqkv and Phi-2's fc2 by the tensor they become, not by a file of theirs.
_MORE_BITS_ROLES = re.compile(r"\.(v_proj|query_key_value|qkv_proj|Wqkv|down_proj|dense_4h_to_h|fc2)$")


def tensor_type(name: str, row: int, file_type: str, layers: int) -> str | None:
    """The format llama.cpp gives the Linear weight `name` (rows of `row` inputs) under `file_type`, or None
    when it cannot be quantised in blocks (a row not a multiple of 32)."""
    if row % QK:
        return None
    if file_type == "q4_0":
        return "q4_0"
    found = _LAYER.search(name)
    layer = int(next(g for g in found.groups() if g is not None)) if found else 0
    more = use_more_bits(layer, layers) if layers else False
    kind = "q6_K" if more and _MORE_BITS_ROLES.search(name) else "q4_K"
    return FALLBACK[kind] if row % QK_K else kind
