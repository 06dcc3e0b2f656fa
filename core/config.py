"""Every setting of an unlearning run, in one dataclass shared by the CLI, the studio and the Python API.

The field's `help` metadata drives the CLI flags and the documentation, so the three never drift apart.
A resolved copy (method defaults filled in) is saved as `config.json` in every run directory.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

from .errors import UnlearnError, require
from .kinds import as_kind
from .paths import absolute as paths_absolute


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


# Settings that name files: recorded as absolute paths (config.json keeps what was typed in `as_given`),
# and `model` too when it is a local directory.
PATH_FIELDS = ("model", "forget", "retain", "normal", "out")
KL_POSITIONS = ("answer", "all")
OPTIMIZERS = ("adamw", "adamw_8bit", "adamw_bf16")   # --optim; core/optimizers.py builds them   # --dtype; core.models.inference_dtype resolves `auto`

# Learning rates that move the model within a few hundred steps. LoRA needs a higher one: at 1e-5 a
# rank-8 adapter on the 135M model barely changes its outputs.
FULL_FINETUNE_LR = 1e-5
LORA_LR = 1e-4


@dataclass
class UnlearnConfig:
    # --- what to unlearn, from which model, into which run directory
    model: str = _opt("bundled", "'bundled' (SmolLM2-135M-Instruct), a local Hugging Face model directory or a hub id")
    method: str = _opt("npo_rt", "unlearning method; `unlearn methods` lists them")
    forget: str = _opt("", "forget set: a .txt/.jsonl/.json/.csv/.parquet/.arrow file, a save_to_disk folder "
                           "(FOLDER@SPLIT), a Hub dataset hf:ORG/NAME[:CONFIG][@SPLIT] or a TOFU split such as "
                           "tofu:forget01")
    retain: Optional[str] = _opt(None, "retain set (same formats); needed by methods with a retain term")
    normal: Optional[str] = _opt(None, "normal set for the Yao method's mismatch and KL terms (default: the retain set)")
    # One column map per set: a forget and a retain set often come from different datasets (WMDP's corpora,
    # wikitext, TOFU), so one map could not serve both.
    forget_columns: Optional[str] = _opt(None, "the forget set's columns when they are not question/answer, "
                                               "prompt/completion, prompt/response or text: "
                                               "question=COL,answer=COL or text=COL")
    retain_columns: Optional[str] = _opt(None, "the retain set's columns, as --forget-columns (they also serve the "
                                               "normal set when it is the retain set)")
    normal_columns: Optional[str] = _opt(None, "the normal set's columns, as --forget-columns")
    out: str = _opt("runs/unlearn", "run directory to write")

    # --- schedule
    epochs: float = _opt(5.0, "passes over the forget set (ignored when --max-steps is set)")
    max_steps: int = _opt(0, "stop after this many optimizer steps (0: use --epochs)")
    batch_size: int = _opt(4, "forget examples per micro-batch (the retain batch has the same size)")
    grad_accum: int = _opt(1, "micro-batches per optimizer step")
    lr: Optional[float] = _opt(None, f"learning rate (default {FULL_FINETUNE_LR} full fine-tuning, {LORA_LR} LoRA, "
                                     "or the method's own: mudman's step size)")
    weight_decay: float = _opt(0.01, "AdamW weight decay")
    warmup_ratio: float = _opt(0.1, "fraction of steps with linearly rising learning rate, then linear decay")
    max_grad_norm: float = _opt(1.0, "gradient clipping norm (0: off)")
    seed: int = _opt(42, "random seed for shuffling, retain pairing and initialisation")
    max_length: int = _opt(256, "longest tokenised example; longer ones are truncated and counted")

    # --- model and adapter
    lora: bool = _opt(False, "train a LoRA adapter instead of all weights")
    lora_r: int = _opt(16, "LoRA rank")
    lora_alpha: int = _opt(32, "LoRA scaling alpha")
    lora_dropout: float = _opt(0.0, "LoRA dropout")
    lora_targets: str = _opt("all-linear", "modules to adapt: 'all-linear' or comma-separated names (q_proj,v_proj)")
    gradient_checkpointing: bool = _opt(False, "recompute activations in backward to save memory")
    load_in_4bit: bool = _opt(False, "QLoRA: keep the frozen base in 4-bit (bitsandbytes nf4, double quantisation; "
                                     "computes in bf16 where the device runs it fast, else fp32); needs --lora")
    load_in_8bit: bool = _opt(False, "keep the frozen base in 8-bit (bitsandbytes LLM.int8); needs --lora")
    optim: str = _opt("adamw", "optimizer: adamw (torch, fp32 moments), adamw_8bit (bitsandbytes, 8-bit moments) "
                               "or adamw_bf16 (bf16 moments, stochastically rounded)")
    kl_positions: str = _opt("answer", "KL terms (ga_kl, npo_kl, yao): averaged over answer positions, or over "
                                       "'all' positions, prompt and padding included, as open-unlearning's code does")
    salient_modules: Optional[float] = _opt(
        None, "SURE (Zhang et al. 2025): each step update only this fraction of neurons (weight rows), those "
              "with the largest forget-loss gradient, so that unlearning survives 4-bit quantisation; 0 = off "
              "(default: the method's; 0.1 for sure, as the paper's 90th-percentile threshold)")
    quant_aware: float = _opt(
        0.0, "quantisation-aware forgetting: each step also takes the method's forget terms on the q4_0 "
             "fake-quantised model (straight-through gradient), times this weight, so the forgetting survives "
             "4-bit export; 0 = off; 1.5-1.9x the step's cost (measured on NPO+RT: core/quantization.py)")
    quant_aware_format: str = _opt(
        "q4_0", "the GGUF file type --quant-aware simulates, weight by weight as llama.cpp stores it: q4_0, or "
                "q4_k_m (q4_K / q6_K, and q5_0 / q8_0 where a row is not a multiple of 256; 1.9x a step "
                "in full fine-tuning against q4_0's 1.6x), or both, q4_0,q4_k_m (one term each, 2.5x: each "
                "term protects only the file it simulates)")
    device: str = _opt("auto", "auto, cpu or cuda")
    dtype: str = _opt("auto", "auto (bf16 mixed precision on a CUDA GPU with bf16 or a CPU with AVX512-BF16/AMX, fp32 elsewhere), float32 or bfloat16")
    trust_remote_code: bool = _opt(False, "allow a hub/local model to run its own Python code (off: safer)")

    # --- run control
    logging_steps: int = _opt(1, "write a metrics line every N optimizer steps")
    save_steps: int = _opt(50, "checkpoint every N optimizer steps (0: only when stopping or finishing)")
    save_total_limit: int = _opt(2, "checkpoints kept on disk")
    eval_examples: int = _opt(32, "forget/retain examples scored before and after for the summary")
    report_to: str = _opt("none", "also send the metrics and settings to experiment trackers: a comma list of "
                                  "tensorboard, trackio, wandb, mlflow, or none; each writes offline into "
                                  "RUN/tracking/")
    resume: bool = _opt(False, "continue the run in --out from its last checkpoint")
    overwrite: bool = _opt(False, "replace a run already in --out")

    # --- the method's hyper-parameters, declared by the method itself (core/methods/<name>.py, `unlearn
    # methods`): those given here, and after resolved() every one with the method's defaults filled in.
    # The CLI makes one flag per declared name; config files may also write them at the top level.
    method_params: Optional[dict] = _opt(None, "the method's hyper-parameters (name -> value)", cli=False)

    # ------------------------------------------------------------------
    def resolved(self) -> "UnlearnConfig":
        """Validate, then fill the learning rate and the method's defaults."""
        from .methods import get_method  # late: methods import losses, which import torch

        self.validate()
        method = get_method(self.method)
        self._refuse_a_quantised_base_for(method)
        lr = next(value for value in (self.lr, method.default_lr, LORA_LR if self.lora else FULL_FINETUNE_LR)
                  if value is not None)
        params = method.resolve_params(self.method_params)
        salient = self.salient_modules if self.salient_modules is not None else method.salient_modules
        return replace(self, lr=lr, method_params=params, salient_modules=salient, dtype=self.training_dtype(),
                       **self.absolute_paths())

    def training_dtype(self) -> str:
        """`auto` decided once, when the run starts, and recorded: a resumed run keeps its precision."""
        from .models import mixed_precision, pick_device

        return "bfloat16" if mixed_precision(self.dtype, pick_device(self.device)) == "bf16" else "float32"

    def absolute_paths(self) -> dict:
        """--out and the data files as absolute paths: a run is read later from any folder (resume,
        export, the studio), and must not depend on the one it was started in. `tofu:` splits and `hf:`
        Hub datasets stay."""
        from .models import BUNDLED, DEMO, HUB_PREFIX

        def absolute(value: str | None) -> str | None:
            if not value or value.startswith(("tofu:", HUB_PREFIX)):
                return value
            return str(paths_absolute(value))
        paths = {name: absolute(getattr(self, name)) for name in PATH_FIELDS if name != "model"}
        named = self.model in (BUNDLED, DEMO) or self.model.startswith(HUB_PREFIX)   # resolve_model's names first
        if not named and Path(self.model).expanduser().exists():   # a local model directory, not a hub id
            paths["model"] = absolute(self.model)
        return paths

    def validate(self) -> None:
        require(bool(self.forget), "no forget set given", "pass --forget FILE (or tofu:forget01)")
        require(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}", "use --batch-size 4")
        require(self.grad_accum >= 1, f"grad_accum must be at least 1, got {self.grad_accum}", "use --grad-accum 1")
        require(self.lr is None or (self.lr > 0 and math.isfinite(self.lr)),
                f"learning rate must be positive, got {self.lr}", "use for example --lr 1e-5")
        require(self.max_steps >= 0, f"max_steps must be 0 or more, got {self.max_steps}", "use --max-steps 100")
        require(self.max_steps > 0 or self.epochs > 0, f"epochs must be positive, got {self.epochs}",
                "use --epochs 5 or --max-steps 100")
        require(self.max_length >= 8, f"max_length {self.max_length} is too short", "use --max-length 256")
        require(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        require(self.weight_decay >= 0, f"weight_decay must be 0 or more, got {self.weight_decay}")
        require(self.max_grad_norm >= 0, f"max_grad_norm must be 0 or more, got {self.max_grad_norm}")
        require(self.salient_modules is None or 0 <= self.salient_modules < 1,
                f"salient_modules must be in [0, 1), got {self.salient_modules}",
                "use for example --salient-modules 0.1 (SURE's default), or 0 for off")
        require(self.quant_aware >= 0 and math.isfinite(self.quant_aware),
                f"quant_aware must be 0 (off) or a positive weight, got {self.quant_aware}",
                "use for example --quant-aware 1, or 0 for off")
        from .ggml_formats import FILE_TYPES, file_types

        named = file_types(self.quant_aware_format)
        unknown = [kind for kind in named if kind not in FILE_TYPES]
        twice = sorted({kind for kind in named if named.count(kind) > 1})
        wrong = f"an unknown file type {unknown[0]!r}" if unknown else f"{twice[0]!r} twice" if twice else ""
        require(not wrong, f"quant_aware_format {self.quant_aware_format!r} names {wrong}",
                f"use --quant-aware-format {' or '.join(FILE_TYPES)}, or several separated by commas "
                f"({','.join(FILE_TYPES)}), each once")
        require(self.kl_positions in KL_POSITIONS, f"unknown kl_positions {self.kl_positions!r}",
                "use --kl-positions answer (ours) or all (open-unlearning's)")
        self._validate_memory_savers()
        require(self.lora_r >= 1, f"lora_r must be at least 1, got {self.lora_r}", "use --lora-r 16")
        require(0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        require(self.logging_steps >= 1, f"logging_steps must be at least 1, got {self.logging_steps}")
        require(self.save_steps >= 0, f"save_steps must be 0 or more, got {self.save_steps}")
        require(self.save_total_limit >= 1, f"save_total_limit must be at least 1, got {self.save_total_limit}")
        require(self.eval_examples >= 0, f"eval_examples must be 0 or more, got {self.eval_examples}")
        from .models import DTYPES

        require(self.dtype in DTYPES, f"unknown dtype {self.dtype!r}", "use auto, float32 or bfloat16")
        require(self.device in ("auto", "cpu", "cuda", "mps"), f"unknown device {self.device!r}",
                "use auto, cpu, cuda or mps")
        require(not (self.resume and self.overwrite), "--resume and --overwrite contradict each other",
                "pass only one of them")
        from .tracking import tracker_names

        tracker_names(self.report_to)   # an unknown or missing tracker fails here, before any model loads

    def _validate_memory_savers(self) -> None:
        """A quantised base (QLoRA) and the optimizer: what they combine with, checked before anything loads."""
        require(self.optim in OPTIMIZERS, f"unknown optimizer {self.optim!r}", f"use --optim {' or '.join(OPTIMIZERS)}")
        require(not (self.load_in_4bit and self.load_in_8bit), "--load-in-4bit and --load-in-8bit contradict each other",
                "pass only one of them")
        flag = "--load-in-4bit" if self.load_in_4bit else "--load-in-8bit" if self.load_in_8bit else None
        if flag is None:
            return
        require(self.lora, f"{flag} freezes the base in low precision, so only a LoRA adapter can train",
                f"add --lora (QLoRA), or drop {flag} to fine-tune every weight")
        require(not self.quant_aware, f"--quant-aware fake-quantises the full-precision weights, which {flag} "
                "has replaced by bitsandbytes' packed ones", f"drop --quant-aware or {flag}")

    def quantized_bits(self) -> int:
        """4 or 8 when the frozen base is kept quantised (QLoRA), else 0."""
        return 4 if self.load_in_4bit else 8 if self.load_in_8bit else 0

    def _refuse_a_quantised_base_for(self, method) -> None:
        """A method that keeps its own copy of the model (ExtraWeights, e.g. mudman's adversary) gets it loaded
        in full precision (init original: the memory a quantised base saves, spent again) or deep-copied from
        the trained model (init current: bitsandbytes' packed weights, which checkpoints cannot save and
        restore). Other methods train only the adapter and read the original with it switched off: they work."""
        copies = [spec.name for spec in method.extra_weights]
        bits = self.quantized_bits()
        require(not (bits and copies), f"method {self.method} keeps its own copy of the model ({', '.join(copies)}), "
                f"which the trainer loads in full precision or copies from the {bits}-bit base, and checkpoints "
                "cannot save a quantised copy",
                f"drop --load-in-{bits}bit (use --lora alone), or choose another method (npo_rt, npo_kl, rmu, ...)")

    # ------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "UnlearnConfig":
        """Settings from a config file, a run's config.json or the CLI. A method's hyper-parameters may
        stand at the top level (as config.json wrote them before methods declared their own): they are
        gathered into method_params, the top-level value first."""
        from .methods import parameter_names

        data = dict(data)
        params = dict(data.pop("method_params", None) or {})
        for name in parameter_names():
            value = data.pop(name, None)
            if value is not None:
                params[name] = value
        if params:
            data["method_params"] = params
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        require(not unknown, f"unknown setting(s) {', '.join(unknown)}",
                f"valid settings are: {', '.join(sorted(known))}")
        hints = get_type_hints(cls)
        return cls(**{name: _coerce(name, value, hints[name]) for name, value in data.items()})

    @classmethod
    def from_file(cls, path: str | Path) -> "UnlearnConfig":
        return cls.from_dict(read_config_file(path))


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """A config file's value as the setting's type. YAML reads 1e-5 (no dot) as a string, so numbers
    written as text are parsed; anything else that does not fit gets one clear message."""
    optional = get_origin(hint) is Union and type(None) in get_args(hint)
    kind = next((a for a in get_args(hint) if a is not type(None)), hint) if optional else hint
    if value is None and optional or kind not in (int, float, bool):
        return value
    try:
        return as_kind(value, kind)
    except ValueError:
        pass
    expected = {bool: "true or false", int: "a whole number", float: "a number"}[kind]
    raise UnlearnError(f"setting {name} must be {expected}, got {value!r}", f"write for example {name}: "
                       + {bool: "true", int: "4", float: "0.0001"}[kind])


def read_config_file(path: str | Path) -> dict:
    """Read a YAML or JSON config file into a dict (one clear error when it is not one)."""
    path = Path(path)
    require(path.is_file(), f"config file {path} does not exist", "check the path given to --config")
    import yaml  # YAML is a superset of JSON: one parser reads both

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UnlearnError(f"config file {path} is not valid YAML/JSON: {exc}", "fix the syntax error it names") from None
    require(isinstance(data, dict), f"config file {path} must hold a mapping of settings",
            "write one `name: value` per line")
    return {key.replace("-", "_"): value for key, value in data.items()}


def cli_fields() -> list:
    """The dataclass fields exposed as CLI flags, with their defaults."""
    return [f for f in fields(UnlearnConfig) if f.metadata.get("cli", True) and f.default is not MISSING]
