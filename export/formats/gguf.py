"""GGUF, for llama.cpp, through its own tools: convert_hf_to_gguf.py writes f32/f16/bf16,
llama_cpp.llama_model_quantize makes every other type from the f16 file, and convert_lora_to_gguf.py turns
the run's LoRA adapter into a small "forget patch" that llama.cpp applies to the base GGUF at load time.
llama.cpp's scripts (export/llamacpp.py) and llama_cpp are loaded only when an artifact is written or run."""
from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from core.errors import UnlearnError

from ..runtime import Runner, default_threads
from .base import IDENTICAL, ExportFormat, Variants, WriteJob, chat_command, register_format

CONVERTER_TYPES = ("f32", "f16", "bf16")          # written directly by convert_hf_to_gguf.py
QUANT_TYPES = {                                    # made by llama_model_quantize from the f16 file
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q5_k_s": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0", "q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M", "q3_k_s": "LLAMA_FTYPE_MOSTLY_Q3_K_S",
    "q3_k_l": "LLAMA_FTYPE_MOSTLY_Q3_K_L", "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
}
# llama.cpp's own note for each tensor it cannot give the requested type
FALLBACK_LINE = re.compile(r"(\S+)\s+- ncols\s+(\d+) not divisible by \d+ \(required for type\s+(\w+)\) "
                           r"-> falling back to\s+(\w+)")


def convert(model_dir: Path, out: Path, outtype: str = "f16", source_dir: Path | None = None) -> Path:
    """A Hugging Face model directory -> one GGUF file (tokenizer and chat template included). `source_dir`:
    the model it came from, whose files transformers may not have written again (see converter_view)."""
    from ..llamacpp import run_script

    with converter_view(model_dir, source_dir) as readable:
        run_script("convert_hf_to_gguf.py", [str(readable), "--outtype", outtype, "--outfile", str(out)])
    return out


# Settings llama.cpp's converters read under their old names, which transformers 5 writes elsewhere (or not
# at all): GPT-NeoX's rotary_pct now lives in rope_parameters; GPT-2 configs it builds lack n_ctx.
LEGACY_SETTINGS = {
    "rotary_pct": lambda config: (config.get("rope_parameters") or {}).get("partial_rotary_factor"),
    "n_ctx": lambda config: config.get("n_positions"),
}
# Files a converter needs that a transformers 5 save_pretrained does not write, even when its source had
# them: the SentencePiece model of Gemma, Gemma 2, Phi-3 (their converters read it, not tokenizer.json).
SOURCE_ONLY_FILES = ("tokenizer.model",)


@contextlib.contextmanager
def converter_view(model_dir: Path, source_dir: Path | None = None):
    """`model_dir` as llama.cpp's converters can read it: a temporary folder of links to its files, with the
    source's SentencePiece model and a config.json that also holds the settings under their old names. The
    model directory itself is left as it is."""
    model_dir = Path(model_dir)
    source_dir = Path(source_dir) if source_dir and Path(source_dir).is_dir() else None
    with tempfile.TemporaryDirectory(prefix="gguf-input-") as tmp:
        view = Path(tmp)
        for path in model_dir.iterdir():
            if path.is_file() and path.name != "config.json":
                (view / path.name).symlink_to(path.resolve())
        for name in SOURCE_ONLY_FILES:
            if source_dir and not (view / name).exists() and (source_dir / name).is_file():
                (view / name).symlink_to((source_dir / name).resolve())
        (view / "config.json").write_text(json.dumps(_readable_config(model_dir, source_dir), indent=2))
        yield view


def _readable_config(model_dir: Path, source_dir: Path | None) -> dict:
    config = json.loads((model_dir / "config.json").read_text())
    source = json.loads((source_dir / "config.json").read_text()) if source_dir and (source_dir / "config.json").is_file() else {}
    for key, derive in LEGACY_SETTINGS.items():
        value = source.get(key, derive(config))
        if key not in config and value is not None:
            config[key] = value
    return config


def quantize(f16: Path, out: Path, quant: str, threads: int | None = None) -> list[dict]:
    """llama_model_quantize f16 -> `quant`; returns the tensors llama.cpp had to quantise to another type."""
    script = Path(__file__).parent.parent / "_quantize.py"
    result = subprocess.run([sys.executable, str(script), str(f16), str(out), QUANT_TYPES[quant],
                             str(threads or default_threads())], capture_output=True, text=True)
    if result.returncode != 0 or not out.is_file():
        tail = "\n".join((result.stderr + result.stdout).strip().splitlines()[-4:])
        raise UnlearnError(f"llama.cpp could not quantise {f16.name} to {quant} (code {result.returncode}):\n{tail}",
                           "try another type, e.g. q8_0")
    return [{"tensor": m[0], "columns": int(m[1]), "wanted": m[2], "used": m[3]}
            for m in FALLBACK_LINE.findall(result.stderr + result.stdout)]


def convert_lora(adapter_dir: Path, base_model_dir: Path, out: Path, base_gguf: Path) -> Path:
    """The PEFT adapter alone as a GGUF LoRA; needs only the base model's config, not its weights. Checked
    against `base_gguf` before anything loads it: llama.cpp crashes on a patch whose shapes do not fit."""
    from ..llamacpp import run_script

    with converter_view(base_model_dir) as base, adapter_view(adapter_dir) as adapter:
        run_script("convert_lora_to_gguf.py", ["--base", str(base), "--outtype", "f16",
                                               "--outfile", str(out), str(adapter)])
    misfits = lora_misfits(out, base_gguf)
    if misfits:
        out.unlink()
        raise UnlearnError(f"llama.cpp's LoRA converter wrote a forget patch that does not fit the base model "
                           f"({len(misfits)} tensors, e.g. {misfits[0]})",
                           "export --formats hf,onnx; or unlearn with full fine-tuning (no --lora), whose "
                           "GGUF export needs no patch")
    return out


@contextlib.contextmanager
def adapter_view(adapter_dir: Path):
    """The adapter as llama.cpp's LoRA converter reads it. PEFT stores A (r x in) and B (out x r) in the
    nn.Linear convention even for GPT-2's Conv1D layers (fan_in_fan_out), whose weight is (in x out); the
    converter takes B @ A for that (in x out) weight and transposes it as it does the base's. Handing it
    A' = B^T and B' = A^T (so B' @ A' = (B @ A)^T) gives back the right delta after its transpose."""
    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if not config.get("fan_in_fan_out"):
        yield adapter_dir
        return
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    swapped = {}
    for name, tensor in tensors.items():
        if ".lora_A." in name:
            swapped[name] = tensors[name.replace(".lora_A.", ".lora_B.")].T.contiguous()
        elif ".lora_B." in name:
            swapped[name] = tensors[name.replace(".lora_B.", ".lora_A.")].T.contiguous()
        else:
            swapped[name] = tensor
    with tempfile.TemporaryDirectory(prefix="gguf-adapter-") as tmp:
        view = Path(tmp)
        save_file(swapped, str(view / "adapter_model.safetensors"))
        (view / "adapter_config.json").write_text(json.dumps({**config, "fan_in_fan_out": False}, indent=2))
        yield view


def lora_misfits(patch: Path, base: Path) -> list[str]:
    """Each patch tensor whose shape does not fit its base weight: llama.cpp computes W x + B (A x), so A
    must take the weight's input width and B give its output width (ggml shapes: (in, r) and (r, out))."""
    from gguf import GGUFReader

    shapes = {t.name: [int(n) for n in t.shape] for t in GGUFReader(str(base)).tensors}
    misfits = []
    for tensor in GGUFReader(str(patch)).tensors:
        weight, _, part = tensor.name.rpartition(".lora_")
        if part not in ("a", "b") or weight not in shapes:
            continue
        shape, base_shape = [int(n) for n in tensor.shape], shapes[weight]
        fits = shape[0] == base_shape[0] if part == "a" else shape[1] == base_shape[1]
        if not fits:
            misfits.append(f"{tensor.name} {shape} for {weight} {base_shape}")
    return misfits


def tensor_report(path: Path, fallbacks: list[dict]) -> dict:
    """Which tensor types the file really holds, and which weights fell back from the requested type
    (k-quants pack 256 values per super-block, so rows like SmolLM2's 576 cannot use them)."""
    from gguf import GGUFReader

    types = Counter(t.tensor_type.name for t in GGUFReader(str(path)).tensors)
    report = {"tensor_types": dict(sorted(types.items())), "fallback_tensors": len(fallbacks)}
    if fallbacks:
        used = Counter(f"{f['wanted']}->{f['used']}" for f in fallbacks)
        report["fallback_note"] = (f"{len(fallbacks)} tensors fell back because their rows are not a multiple "
                                   f"of 256 wide: " + ", ".join(f"{n} x {k}" for k, n in sorted(used.items())))
    return report


class GGUFRunner(Runner):
    """llama_cpp.Llama with every position's logits kept, optionally with a LoRA applied at load time."""

    def __init__(self, path: Path, lora_path: Path | None = None, n_ctx: int = 2048, threads: int | None = None,
                 name: str | None = None):
        from llama_cpp import Llama

        threads = threads or default_threads()
        self.name = name or f"gguf-{path.stem}"
        # flash_attn: llama.cpp's own default ("auto"), which llama-cpp-python turns off; on the bundled model
        # it decodes ~9 % faster with the same parity (docs/benchmarks.md).
        self.llm = Llama(model_path=str(path), lora_path=str(lora_path) if lora_path else None, n_ctx=n_ctx,
                         logits_all=True, n_threads=threads, n_threads_batch=threads, flash_attn=True,
                         verbose=False)

    def prefill(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[:len(ids)])

    def step(self, token: int) -> np.ndarray:
        self.llm.eval([token])
        return np.array(self.llm.scores[self.llm.n_tokens - 1])

    def close(self) -> None:
        self.llm.close()


# ---------------------------------------------------------------- the format

@register_format
class GGUF(ExportFormat):
    name = "gguf"
    title = "GGUF"
    summary = "llama.cpp files, one per quantisation type (+ the LoRA forget patch on the base)"
    order = 10
    packages = {"llama_cpp": "llama-cpp-python", "gguf": "gguf"}
    install = ('run: CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python==0.3.36 '
               "(a source build: about 5 minutes)")
    variants = Variants("GGUF quantisation type", CONVERTER_TYPES + tuple(QUANT_TYPES),
                        default=("f16", "q8_0", "q4_k_m"), keyword="gguf_quants", flag="--gguf-quant",
                        studio=("f16", "q8_0"))
    studio_ticked = True
    goals = {"gguf-f16": IDENTICAL, "gguf-q8_0": (False, 0.9)}
    cross_checks = (("gguf-lora", "gguf-f16", "vs_merged_f16"),)   # the patch must act like the merged model
    card_note = ("The GGUF files load in llama.cpp unmodified (`llama-cli -m gguf/model-q8_0.gguf`); "
                 "`gguf/forget-patch-f16.gguf` applies on `gguf/base-f16.gguf` with `--lora`. Each GGUF has an "
                 "Ollama Modelfile beside it (chat template, stop tokens; the forget patch as ADAPTER): "
                 "`ollama create NAME -f gguf/model-q8_0.Modelfile`.")

    def refusal(self, source) -> str | None:
        from ..llamacpp import supported_architectures

        if source.architecture not in supported_architectures():
            return f"llama.cpp's converter does not support the architecture {source.architecture}"
        return None

    def write(self, job: WriteJob, variants: list[str]) -> dict[str, dict]:
        job.log(f"GGUF: {', '.join(variants)} (llama.cpp converter and quantiser)")
        with job.timed("gguf"):
            return _write_gguf(job, variants)

    def open_runner(self, name: str, artifact: dict, bundle: Path):
        if name == "gguf-lora":
            return GGUFRunner(bundle / artifact["base"], lora_path=bundle / artifact["path"], name=name)
        return GGUFRunner(bundle / artifact["path"], name=name)

    def card_lines(self, artifacts: dict[str, dict]) -> list[str]:
        chats = [chat_command(name) for name in artifacts if name.startswith("gguf-q")]
        return chats + [f"ollama create unlearned-{name.removeprefix('gguf-')} -f {artifact['modelfile']}"
                        for name, artifact in artifacts.items() if "modelfile" in artifact]


def _write_gguf(job: WriteJob, quants: list[str]) -> dict[str, dict]:
    """One GGUF per type from the merged model (quantised from its f16 file), and a LoRA run's patch, each
    with its Ollama Modelfile."""
    from core.models import load_tokenizer

    from ..modelfile import write_modelfiles

    source, target = job.source, job.bundle / "gguf"
    target.mkdir(parents=True)
    artifacts = {}
    source_dir = Path(source.base_model)
    f16 = convert(job.merged_dir, target / "model-f16.gguf", "f16", source_dir)
    for quant in quants:
        path = target / f"model-{quant}.gguf"
        fallbacks = []
        with job.timed(f"gguf_{quant}"):
            if quant in CONVERTER_TYPES and quant != "f16":
                convert(job.merged_dir, path, quant, source_dir)
            elif quant != "f16":
                fallbacks = quantize(f16, path, quant)
        artifacts[f"gguf-{quant}"] = {"path": str(path.relative_to(job.bundle)), **tensor_report(path, fallbacks)}
    if "f16" not in quants:
        f16.unlink()
    if source.is_lora:  # the forget patch: base GGUF + adapter GGUF applied at load time
        with job.timed("gguf_lora"):
            base = convert(Path(source.base_model), target / "base-f16.gguf", "f16")
            patch = convert_lora(source.model_dir, Path(source.base_model), target / "forget-patch-f16.gguf", base)
        artifacts["gguf-lora"] = {"path": str(patch.relative_to(job.bundle)), "base": str(base.relative_to(job.bundle))}
    write_modelfiles(target, job.merged_dir, load_tokenizer(str(job.merged_dir)), artifacts, job.bundle, job.log)
    return artifacts
