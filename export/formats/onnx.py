"""ONNX, for onnxruntime: a decoder with KV cache (past_key_values.N.key/value in, present.N.key/value out) in
fp32, fp16 and int4, built by onnxruntime-genai's model builder from the merged Hugging Face model.

Why the builder and not our own torch.onnx export: measured on the bundled model it exports about 10x
faster and decodes faster (fused GroupQueryAttention / SkipSimplifiedLayerNorm contrib ops), with the same
fp32 parity; docs/export.md has the numbers. The builder is run as a subprocess (its CLI is its stable
interface). The graphs use com.microsoft contrib ops, so they need onnxruntime (any execution provider),
which is the runtime this bundle targets; each directory also carries genai_config.json and the tokenizer,
so onnxruntime-genai's own generator runs it unmodified too.
"""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from core.errors import UnlearnError, require

from ..runtime import Runner, default_threads
from .base import IDENTICAL, ExportFormat, Variants, WriteJob, chat_command, register_format

PRECISIONS = ("fp32", "fp16", "int4")
TARGETS = ("cpu", "cuda")
MODEL_FILE = "model.onnx"
# int4: blocks of 32 (SmolLM2's 576-wide rows split evenly), int8 activations inside the matmul (accuracy_level
# 4: what makes int4 fast on CPUs), and the builder's k_quant_mixed recipe: k-quant scales, with the tied
# embedding / lm_head and the most sensitive layers (llama.cpp's Q4_K_M choice) kept at int8. On the bundled
# model it raises teacher-forced token agreement with PyTorch from 0.68 (plain round-to-nearest) to 0.81 for
# ~10 % slower decode and 112 MB instead of 86 MB (docs/export.md). Asymmetric blocks would halve the logit
# error too, but the builder's tied-embedding path then emits a graph onnxruntime 1.31 rejects.
INT4_OPTIONS = ("block_size=32", "accuracy_level=4", "algo_config=k_quant_mixed")


def _builder_source() -> Path:
    spec = importlib.util.find_spec("onnxruntime_genai")
    require(spec is not None and spec.submodule_search_locations,
            "ONNX export needs onnxruntime-genai's model builder, which is not installed",
            "run: pip install onnxruntime-genai==0.18.0 (with onnxruntime-gpu: add --no-deps)")
    return Path(spec.submodule_search_locations[0]) / "models" / "builder.py"


def supported_architectures() -> set[str]:
    """Architectures the installed builder dispatches on, read from its source without importing it."""
    text = _builder_source().read_text(encoding="utf-8")
    return set(re.findall(r'config\.architectures\[0\] == "(\w+)"', text))


def build(model_dir: Path, target: Path, precision: str, cache_dir: Path, execution_provider: str = "cpu") -> Path:
    """merged Hugging Face directory -> target/model.onnx (+ .data, genai_config.json, tokenizer)."""
    _builder_source()
    args = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model_dir), "-o", str(target),
            "-p", precision, "-e", execution_provider, "-c", str(cache_dir)]
    if precision == "int4":
        args += ["--extra_options", *INT4_OPTIONS]
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0 or not (target / MODEL_FILE).is_file():
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-6:])
        raise UnlearnError(f"onnxruntime-genai's model builder failed ({precision}):\n{tail}",
                           "export without onnx (--formats hf,gguf), or try another --onnx-precision")
    return target / MODEL_FILE


# ---------------------------------------------------------------- runtime

def providers() -> list[str]:
    """CUDA where onnxruntime-gpu is installed and sees a GPU, the CPU otherwise (and as fallback)."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]


def _is_fp16(model_dir: Path) -> bool:
    import onnx

    graph = onnx.load(str(model_dir / MODEL_FILE), load_external_data=False).graph
    return graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def _empty_cache_shape(input_shape: list, decoder: dict) -> tuple[int, ...]:
    """The past key/value fed at prefill: empty (it grows step by step), except in a sliding-window layer
    (Gemma 2's local layers), whose GroupQueryAttention keeps a bounded cache and needs its full capacity,
    window_size positions, from the start, as onnxruntime-genai allocates it."""
    heads = input_shape[1] if isinstance(input_shape[1], int) else decoder["num_key_value_heads"]
    length = decoder["sliding_window"]["window_size"] if input_shape[2] == "past_sliding_length" else 0
    return (1, heads, length, decoder["head_size"])


class OnnxRunner(Runner):
    """A plain onnxruntime InferenceSession over the decoder, batch 1, feeding present.* back as past.*."""

    def __init__(self, model_dir: Path, name: str | None = None, threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.log_severity_level = 3  # errors only: buffer-reuse notes below are expected, not problems
        if _is_fp16(model_dir) and providers() == ["CPUExecutionProvider"]:
            # The CPU runs an fp16 graph through inserted casts, and onnxruntime 1.31 then tries to reuse a
            # prefill-sized buffer for a one-token step ("Shape mismatch attempting to re-use buffer").
            options.enable_mem_reuse = False
        self.session = onnxruntime.InferenceSession(str(model_dir / MODEL_FILE), options, providers=providers())
        self.name = name or f"onnx-{model_dir.name}"
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        self.present_for = {n: "present." + n.removeprefix("past_key_values.") for n in self.past_names}
        self.needs_positions = "position_ids" in inputs
        self.output_names = [o.name for o in self.session.get_outputs()]
        first = inputs[self.past_names[0]]
        decoder = json.loads((model_dir / "genai_config.json").read_text())["model"]["decoder"]
        self.cache_shapes = {name: _empty_cache_shape(inputs[name].shape, decoder) for name in self.past_names}
        self.cache_dtype = np.float16 if "float16" in first.type else np.float32
        self.past: dict[str, np.ndarray] = {}
        self.length = 0

    def _run(self, ids: list[int]) -> np.ndarray:
        n = len(ids)
        feed = {"input_ids": np.array([ids], dtype=np.int64),
                "attention_mask": np.ones((1, self.length + n), dtype=np.int64), **self.past}
        if self.needs_positions:
            feed["position_ids"] = np.arange(self.length, self.length + n, dtype=np.int64)[None]
        outputs = dict(zip(self.output_names, self.session.run(self.output_names, feed)))
        self.past = {past: outputs[present] for past, present in self.present_for.items()}
        self.length += n
        return outputs["logits"][0].astype(np.float32)

    def prefill(self, ids: list[int]) -> np.ndarray:
        self.length = 0
        self.past = {n: np.zeros(self.cache_shapes[n], dtype=self.cache_dtype) for n in self.past_names}
        return self._run(ids)

    def step(self, token: int) -> np.ndarray:
        return self._run([token])[-1]

    def close(self) -> None:
        self.past = {}
        self.session = None


# ---------------------------------------------------------------- the format

@register_format
class ONNX(ExportFormat):
    name = "onnx"
    title = "ONNX"
    summary = "onnxruntime decoders with KV cache, one per precision (onnxruntime-genai's model builder)"
    order = 20
    packages = {"onnxruntime_genai": "onnxruntime-genai", "onnxruntime": "onnxruntime", "onnx": "onnx"}
    install = "run: pip install onnxruntime-genai==0.18.0 (with onnxruntime-gpu: add --no-deps)"
    variants = Variants("ONNX precision", PRECISIONS, default=PRECISIONS, keyword="onnx_precisions",
                        flag="--onnx-precision", studio=("fp32",))
    goals = {"onnx-fp32": IDENTICAL}
    card_note = "The ONNX decoders run in onnxruntime with `past_key_values.N.key/value` inputs."

    def refusal(self, source) -> str | None:
        config = source.model_config
        architecture = (config.get("architectures") or ["unknown"])[0]
        if architecture not in supported_architectures():
            return f"onnxruntime-genai's model builder does not support the architecture {architecture}"
        head_size = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        if head_size % 16:
            return (f"onnxruntime's GroupQueryAttention needs a head size that is a multiple of 16; "
                    f"this model's is {head_size}")
        return None

    def write(self, job: WriteJob, variants: list[str]) -> dict[str, dict]:
        job.log(f"ONNX: {', '.join(variants)} (onnxruntime-genai model builder)")
        artifacts, target = {}, job.bundle / "onnx"
        with job.timed("onnx"):
            for precision in variants:
                with job.timed(f"onnx_{precision}"):
                    build(job.merged_dir, target / precision, precision, target / ".builder-cache")
                artifacts[f"onnx-{precision}"] = {"path": f"onnx/{precision}"}
            shutil.rmtree(target / ".builder-cache", ignore_errors=True)
        return artifacts

    def open_runner(self, name: str, artifact: dict, bundle: Path):
        return OnnxRunner(bundle / artifact["path"], name=name)

    def card_lines(self, artifacts: dict[str, dict]) -> list[str]:
        return [chat_command(name) for name in artifacts if name == "onnx-fp32"]
