"""`unlearn plan`: the memory a run will need per device, before it starts, and the largest batch that fits.

The pieces are the trainer's own choices (core/trainer.py, core/models.py), sized from the model's config
alone (an empty-weights model: no download, no weights read):
- weights: accelerate's size estimate of every module (`compute_module_sizes`) in the dtype the trainer keeps
  them in: fp32 master weights for full fine-tuning (bf16 autocast computes in bf16, the weights stay fp32);
  under LoRA the frozen base in bf16 where bf16 is used, else fp32; under QLoRA the decoder's linear weights
  in 4-bit nf4 (0.5 byte + one fp32 scale per 64 weights, double quantisation folds those to ~0.127 bit)
  or 8-bit (1 byte + a scale per row), the rest (embeddings, norms, lm_head) in the compute dtype.
- gradients (fp32, one per trained weight) and the optimizer's two moments (fp32 8 bytes per weight,
  bf16 4, 8-bit 2).
- copies: the frozen original a method reads (KL terms, RMU) under full fine-tuning (LoRA switches its adapter
  off instead: no copy), the extra weights a method declares (MUDMAN's adversary, a teacher), NPO+SAM/RS's copy
  of the trained weights and SAM's of their gradient.
- activations: what autograd keeps for one view's backward (the trainer backpropagates forget and retain
  apart), per token and layer, from the config's sizes with a factor measured on this project's CPU
  (benchmarks/activation_memory.py: 1.48 MiB per token for SmolLM2-135M in fp32; with gradient checkpointing
  the layer inputs plus one layer recomputed; on CPU both scaled to the measured peaks, see CPU_SLACK), times
  batch x --max-length (the trainer pads per batch, so real data with shorter examples needs less); plus the
  answer positions' logits (vocabulary-wide, fp32).
- the runtime: on CPU the Python process with torch and transformers (measured here), on CUDA the context.
With --gpus N under FSDP the weights, gradients, optimizer state and copies are sharded N ways; under DDP each
device holds them whole. The figures were checked against benchmarks/memory.py's measured peaks
(docs/benchmarks.md); the estimate is of the training loop's peak, not of evaluation or export."""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import require

GiB = 2 ** 30
MiB = 2 ** 20
# Measured (docs/benchmarks.md, "Where the memory goes"): autograd's saved bytes per token and layer over the
# analytic count of the tensors a decoder layer keeps (6 x hidden + 4 x intermediate elements).
ACTIVATION_FACTOR = 1.31
CHECKPOINTED_FACTOR = 1.66           # the same, with checkpointing: layer inputs kept, one layer recomputed (0.17 MiB)
# On CPU the peak holds more than autograd's saved tensors: glibc keeps freed activation pages around, and
# recomputation under checkpointing saves far less than on a GPU. Fitted to benchmarks/memory.py's peaks of
# full fine-tuning and LoRA (2.72 and 3.16 MiB per token above the fixed parts: the mean, 2.05x the saved
# tensors) and LoRA+checkpointing (0.60x LoRA's per token); 2026-12-06, 2-core AVX2 CPU, fp32. The 4-bit and
# 8-bit/bf16-moment rows were not fitted: they check the estimate (docs/benchmarks.md).
CPU_SLACK = 2.05
CPU_CHECKPOINTED_SHARE = 0.60
RUNTIME = {"cpu": 0.48 * GiB, "cuda": 0.5 * GiB}     # python+torch+transformers on CPU; a CUDA context
OPTIMIZER_BYTES = {"adamw": 8, "adamw_bf16": 4, "adamw_8bit": 2}
QUANTIZED_BYTES = {4: 0.5 + 0.127 / 8, 8: 1.0 + 4 / 576}   # per weight, scales included (see above)
ANSWER_SHARE = 0.5                    # the answer positions whose logits the loss keeps: about half a QA example


@dataclass
class PlanRequest:
    model: str
    method: str = "npo_rt"
    lora: bool = False
    lora_r: int = 16
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    gradient_checkpointing: bool = False
    batch_size: int = 4
    max_length: int = 256
    gpus: int = 1
    strategy: str = "fsdp"            # with gpus > 1: fsdp (sharded) or ddp (whole on each device)
    device: str = "cuda"
    dtype: str = "auto"               # auto: bf16 on CUDA, the trainer's choice on CPU
    optim: str = "adamw"
    trust_remote_code: bool = False


@dataclass
class MemoryPlan:
    request: PlanRequest
    parts: dict[str, float] = field(default_factory=dict)   # name -> bytes per device, whatever the batch
    per_example_parts: dict[str, float] = field(default_factory=dict)   # name -> bytes per example of the batch
    notes: list[str] = field(default_factory=list)

    @property
    def per_example(self) -> float:
        return sum(self.per_example_parts.values())

    @property
    def total(self) -> float:
        return sum(self.parts.values()) + self.per_example * self.request.batch_size

    def largest_batch(self, memory: float) -> int:
        """The largest batch whose peak fits `memory` bytes per device (0: not even one example)."""
        room = memory - sum(self.parts.values())
        return max(0, int(room // self.per_example)) if self.per_example else 0


def plan_memory(request: PlanRequest) -> MemoryPlan:
    from .methods import get_method

    _check(request)
    method = get_method(request.method)
    model, config = _empty_model(request)
    compute_bytes = 2 if _uses_bf16(request) else 4
    sizes = _weight_bytes(model, request, compute_bytes)
    trained = _trained_count(model, request)
    shards = request.gpus if request.gpus > 1 and request.strategy == "fsdp" else 1
    result = MemoryPlan(request)
    result.parts["runtime"] = RUNTIME[request.device]
    result.parts["weights"] = sizes / shards
    result.parts["gradients"] = trained * 4 / shards
    result.parts["optimizer"] = trained * OPTIMIZER_BYTES[request.optim] / shards
    copies = _copies(method, request, sizes, trained)
    if copies:
        result.parts["copies"] = copies / shards
    result.per_example_parts["activations"] = _activation_bytes_per_token(config, request, compute_bytes) * request.max_length
    result.per_example_parts["answer logits"] = (request.max_length * ANSWER_SHARE * config.vocab_size
                                                 * 4 * 2)   # logits and their log-softmax, fp32
    result.notes += _notes(method, request, shards)
    return result


def _check(request: PlanRequest) -> None:
    require(request.device in RUNTIME, f"unknown device {request.device!r}", "use --device cuda or cpu")
    require(request.optim in OPTIMIZER_BYTES, f"unknown optimizer {request.optim!r}",
            f"use --optim {' or '.join(OPTIMIZER_BYTES)}")
    require(request.strategy in ("fsdp", "ddp"), f"unknown strategy {request.strategy!r}", "use --strategy fsdp or ddp")
    require(request.gpus >= 1 and request.batch_size >= 1 and request.max_length >= 1,
            "--gpus, --batch-size and --max-length must be 1 or more", "give positive whole numbers")
    require(not ((request.load_in_4bit or request.load_in_8bit) and not request.lora),
            "a 4-bit or 8-bit base trains only through LoRA", "add --lora")


def _empty_model(request: PlanRequest):
    """The model built on the meta device from its config: sizes without weights. Through torch's device
    context, which holds for this thread only: accelerate's init_empty_weights patches nn.Module for the whole
    process, and a model another thread loads meanwhile (the studio's) would come out on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from .models import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(request.model), trust_remote_code=request.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=request.trust_remote_code)
    model.tie_weights()   # on the meta device the output head is not tied yet: it would be counted twice
    return model, config


def _uses_bf16(request: PlanRequest) -> bool:
    if request.dtype != "auto":
        return request.dtype == "bfloat16"
    if request.device == "cuda":
        return True
    import torch

    from .models import inference_dtype

    return inference_dtype("auto", torch.device("cpu")) == torch.bfloat16


def _decoder_linears(model) -> list:
    """The linear layers LoRA's all-linear adapts and QLoRA quantises: every nn.Linear but the output head."""
    import torch

    head = model.get_output_embeddings()
    return [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]


def _weight_bytes(model, request: PlanRequest, compute_bytes: int) -> float:
    import torch
    from accelerate.utils import compute_module_sizes

    dtype = torch.bfloat16 if compute_bytes == 2 and request.lora else torch.float32
    total = compute_module_sizes(model, dtype=dtype)[""]
    bits = 4 if request.load_in_4bit else 8 if request.load_in_8bit else None
    if bits:
        linear = sum(m.weight.numel() for _, m in _decoder_linears(model))
        total += linear * (QUANTIZED_BYTES[bits] - torch.finfo(dtype).bits / 8)
    return total


def _trained_count(model, request: PlanRequest) -> int:
    if not request.lora:
        return sum(p.numel() for p in model.parameters())
    return sum(request.lora_r * (m.in_features + m.out_features) for _, m in _decoder_linears(model))


def _copies(method, request: PlanRequest, weights: float, trained: int) -> float:
    copies = 0.0
    if method.needs_original() and not request.lora:
        copies += weights
    for spec in method.extra_weights:
        copies += weights if spec.init == "original" or not request.lora else weights + trained * 4
    copies += trained * 4 * method.trained_copies
    return copies


def _activation_bytes_per_token(config, request: PlanRequest, compute_bytes: int) -> float:
    hidden = config.hidden_size
    intermediate = getattr(config, "intermediate_size", 4 * hidden)
    layers = config.num_hidden_layers
    per_token = layers * (6 * hidden + 4 * intermediate) * compute_bytes * ACTIVATION_FACTOR
    if request.device == "cpu":
        per_token *= CPU_SLACK
        return per_token * (CPU_CHECKPOINTED_SHARE if request.gradient_checkpointing else 1.0)
    if request.gradient_checkpointing:   # never more than without it (a model of few layers saves little)
        kept = (layers * hidden + 6 * hidden + 4 * intermediate) * compute_bytes * CHECKPOINTED_FACTOR
        per_token = min(per_token, kept)
    return per_token


def _notes(method, request: PlanRequest, shards: int) -> list[str]:
    notes = []
    if request.gpus > 1:
        notes.append(f"{request.strategy.upper()} over {request.gpus} devices: weights, gradients, optimizer state "
                     f"and copies {'sharded ' + str(shards) + ' ways' if shards > 1 else 'whole on each device'}; "
                     "activations per device")
    if method.needs_original():
        notes.append("the original model: adapter switched off (no copy)" if request.lora else
                     "the original model: a frozen copy of the weights")
    notes.append(f"activations for batch {request.batch_size} x {request.max_length} tokens (padded length: "
                 "shorter data needs less)")
    return notes


def describe(plan: MemoryPlan, memory_gib: float | None = None) -> str:
    """The plan as the command prints it: one line per part, the total, and the largest batch that fits."""
    request = plan.request
    lines = [f"memory per device for {request.method} on {request.model} "
             f"({'QLoRA 4-bit' if request.load_in_4bit else 'QLoRA 8-bit' if request.load_in_8bit else 'LoRA' if request.lora else 'full fine-tuning'}"
             f"{', gradient checkpointing' if request.gradient_checkpointing else ''}, {request.device}, "
             f"optimizer {request.optim}):"]
    for name, size in plan.parts.items():
        lines.append(f"  {name:<14} {size / GiB:8.2f} GiB")
    for name, size in plan.per_example_parts.items():
        lines.append(f"  {name:<14} {size * request.batch_size / GiB:8.2f} GiB ({size / MiB:.0f} MiB per example)")
    lines.append(f"  {'total':<14} {plan.total / GiB:8.2f} GiB")
    if memory_gib:
        batch = plan.largest_batch(memory_gib * GiB)
        lines.append(f"largest batch that fits {memory_gib:g} GiB: {batch}" if batch else
                     f"does not fit {memory_gib:g} GiB even at batch 1: try --lora, --load-in-4bit, "
                     "--gradient-checkpointing, --optim adamw_8bit or more --gpus")
    lines += [f"  note: {note}" for note in plan.notes]
    return "\n".join(lines)


# ---------------------------------------------------------------- unlearn plan

def add_command(commands) -> None:
    p = commands.add_parser(
        "plan", help="the memory a run needs per device, and the largest batch that fits, before it starts",
        description="Estimate a run's peak memory per device from the model's config alone (nothing is loaded). "
                    "Example: unlearn plan --model meta-llama/Llama-3.1-8B --method npo_rt --lora "
                    "--load-in-4bit --gradient-checkpointing --memory 24")
    p.add_argument("--model", required=True, help="a model folder, Hub id (config only), bundled or demo")
    p.add_argument("--method", default="npo_rt")
    p.add_argument("--lora", action="store_true")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--load-in-4bit", action="store_true")
    p.add_argument("--load-in-8bit", action="store_true")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256, help="tokens per example (the padded length)")
    p.add_argument("--gpus", type=int, default=1, help="devices the run spreads over")
    p.add_argument("--strategy", choices=("fsdp", "ddp"), default="fsdp", help="with --gpus > 1 (default: fsdp)")
    p.add_argument("--device", choices=tuple(RUNTIME), default="cuda")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
    p.add_argument("--optim", choices=tuple(OPTIMIZER_BYTES), default="adamw")
    p.add_argument("--memory", type=float, default=None, metavar="GIB",
                   help="memory per device: print the largest batch that fits it")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--json", action="store_true", help="print the parts in bytes as JSON")
    p.set_defaults(handler=run_plan)


def run_plan(args) -> int:
    import json

    fields = {name for name in PlanRequest.__dataclass_fields__}
    request = PlanRequest(**{k: v for k, v in vars(args).items() if k in fields})
    plan = plan_memory(request)
    if args.json:
        print(json.dumps({"parts": plan.parts, "per_example": plan.per_example_parts,
                          "batch": request.batch_size, "total": plan.total, "largest_batch": plan.largest_batch(args.memory * GiB)
                          if args.memory else None, "notes": plan.notes}, indent=2))
    else:
        print(describe(plan, args.memory))
    return 0
