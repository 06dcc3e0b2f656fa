"""Benchmark: our NPO+RT trainer against two faithful two-model baselines, the NPO paper's code and
open-unlearning's NPO trainer.

Run from the repository root (about 10-15 minutes on an idle 2-core CPU; 43 minutes when the 2 cores
were shared with other jobs, see docs/benchmarks.md):

    python benchmarks/trainer.py                       # default: 1 warm-up + 3 measured steps, 2 rounds
    python benchmarks/trainer.py --json bench.json     # also write every figure as JSON
    python benchmarks/trainer.py --quick               # smoke run: 1 warm-up + 1 measured step, 1 round
    python benchmarks/trainer.py --device cuda         # on a GPU (bf16 autocast, CUDA peak memory)
    python benchmarks/trainer.py --variants ours,ours_lora,ours_lora_gc --dtype auto   # LoRA / full in bf16

Four variants by default (a fifth with --variants), each in its own fresh subprocess (`sys.executable`) so
that peak memory is per variant; the rounds alternate their order so that other load on the machine hits every
variant alike:

baseline   The NPO paper's code (github.com/licong-lin/negative-preference-optimization, `TOFU/`):
           `npo_grad_diff` as a plain loop: a policy model plus a second frozen reference copy forwarded
           under no_grad on the forget batch at every step; every sample padded to 500 tokens with EOS,
           question tokens labelled -100, one EOS after the answer as a label; NPO on the per-sequence
           summed NLL of full logits + retain mean-token NLL.
open_unlearning  open-unlearning's NPO (src/trainer/unlearn/npo.py) as a Hugging Face Trainer: a
           deep-copied reference model forwarded on each forget batch, every part padded to the longest
           sequence in its batch, plus the retain NLL.
ours       `core.trainer.train` with method npo_rt, full fine-tuning.
ours_lora  the same with `lora=True` (default rank), for the LoRA / full memory ratio.
ours_lora_gc  (only with --variants) LoRA plus `gradient_checkpointing=True`, to show what activations cost.

All use TOFU forget01 (+ retain99), the bundled SmolLM2-135M-Instruct with its chat template, batch 4,
AdamW (lr 1e-5, weight decay 0.01 without decay on norms, linear schedule with 10 % warm-up, gradient
clipping 1.0). CPU: fp32 everywhere. CUDA: fp32 weights + bf16 autocast for both policies (our dtype
"auto"); the baseline's reference copy is held in bf16, as in the NPO code.

Measured:
- seconds per optimizer step, steady state: the first `--warmup` steps of every run are dropped, the
  median of the remaining steps (all rounds pooled) is reported; ours comes from metrics.jsonl
  (`wall_time`), the baseline from a clock around the same work (batch fetch to optimizer step);
  the process CPU seconds per step are reported beside them (less sensitive to other load on a CPU);
- peak memory: on CPU the process's peak RSS (VmHWM) up to the end of the training loop, and the
  training-loop-only peak (VmHWM reset with /proc/self/clear_refs when the loop starts); on CUDA
  torch.cuda.max_memory_allocated (the peak RSS is recorded too);
- our one-time cost: the reference NLL cache computed before the loop (reported, not in s/step).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/trainer.py` puts benchmarks/ first, not the repo
    sys.path.insert(0, str(REPO))

FORGET, RETAIN = "tofu:forget01", "tofu:retain99"
BATCH_SIZE = 4
LR = 1e-5
WEIGHT_DECAY = 0.01
WARMUP_RATIO = 0.1
MAX_GRAD_NORM = 1.0
BETA = 0.1
BASELINE_MAX_LENGTH = 500          # the NPO code's forget.py
SEED = 42
VARIANTS = ("baseline", "open_unlearning", "ours", "ours_lora", "ours_lora_gc")
DEFAULT_VARIANTS = ("baseline", "open_unlearning", "ours", "ours_lora")
LABELS = {"baseline": "baseline (NPO code: 2 models, pad 500)",
          "open_unlearning": "open-unlearning NPO (HF Trainer, deep-copied reference, pad to longest)",
          "ours": "ours, full fine-tuning",
          "ours_lora": "ours, LoRA (default rank)", "ours_lora_gc": "ours, LoRA + gradient checkpointing"}
# (name, numerator, denominator, metric, goal, "ge"/"le")
GOALS = (
    ("throughput ours / baseline", "ours", "baseline", "throughput", 1.6, "ge"),
    ("throughput by CPU time (info)", "ours", "baseline", "throughput_cpu", None, None),
    ("peak memory ours / baseline", "ours", "baseline", "memory", 0.65, "le"),
    ("throughput ours / open-unlearning", "ours", "open_unlearning", "throughput", 1.5, "ge"),
    ("peak memory ours / open-unlearning", "ours", "open_unlearning", "memory", 0.7, "le"),
    ("peak memory LoRA / full (ours)", "ours_lora", "ours", "memory", 0.5, "le"),
    ("peak memory LoRA+GC / full (info)", "ours_lora_gc", "ours", "memory", None, None),
)


# ==================================================================== memory and clocks (in a child)

def _status_kib(field: str) -> int | None:
    """A `VmXXX:  N kB` figure of this process from /proc/self/status (Linux), else None."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def peak_rss_mib() -> float:
    kib = _status_kib("VmHWM")
    if kib is None:  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "darwin" else 1)
    return kib / 1024


def reset_peak_rss() -> bool:
    """Set VmHWM back to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMeter:
    """Peak memory before the training loop (loading, set-up) and during it, host and CUDA."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"
        self.figures: dict[str, float | None] = {}

    def _cuda_peak_mib(self) -> float | None:
        import torch

        if not self.cuda:
            return None
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20

    def start_loop(self) -> None:
        import torch

        self.figures["setup_peak_rss_mib"] = peak_rss_mib()
        self.figures["setup_peak_cuda_mib"] = self._cuda_peak_mib()
        self.loop_reset = reset_peak_rss()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def end_loop(self) -> None:
        loop_rss = peak_rss_mib()
        self.figures["loop_peak_rss_mib"] = loop_rss if self.loop_reset else None
        self.figures["peak_rss_mib"] = max(loop_rss, self.figures["setup_peak_rss_mib"])
        if self.cuda:
            loop_cuda = self._cuda_peak_mib()
            self.figures["loop_peak_cuda_mib"] = loop_cuda
            self.figures["peak_cuda_mib"] = max(loop_cuda, self.figures["setup_peak_cuda_mib"])


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# ==================================================================== variant: our trainer

def run_ours(device: str, total_steps: int, lora: bool, checkpointing: bool = False, dtype: str = "float32") -> dict:
    """`core.trainer.train` as a user runs it, observed through its callbacks (nothing patched). `dtype`
    applies on the CPU (on CUDA ours is always "auto", as the baselines' bf16 autocast)."""
    import core.trainer as trainer_module
    from core.config import UnlearnConfig

    meter, one_time, cpu_marks = PeakMeter(device), {}, []

    class Metered(trainer_module.Callback):
        def on_loop_begin(self, state):
            one_time["params"], one_time["trainable_params"] = state.params, state.trainable_params
            one_time["reference_nll_s"] = state.reference_seconds
            one_time["loop_start_rss_mib"] = (_status_kib("VmRSS") or 0) / 1024
            meter.start_loop()
            cpu_marks.append(time.process_time())

        def on_log(self, state, row):   # once per step (logging_steps=1): the step's CPU time so far
            cpu_marks.append(time.process_time())

        def on_loop_end(self, state, outcome):
            meter.end_loop()

    with tempfile.TemporaryDirectory(prefix="bench-ours-") as tmp:
        config = UnlearnConfig(
            model="bundled", method="npo_rt", forget=FORGET, retain=RETAIN, out=str(Path(tmp) / "run"),
            batch_size=BATCH_SIZE, lr=None if lora else LR, weight_decay=WEIGHT_DECAY, warmup_ratio=WARMUP_RATIO,
            max_grad_norm=MAX_GRAD_NORM, method_params={"beta": BETA}, seed=SEED, max_steps=total_steps, lora=lora,
            gradient_checkpointing=checkpointing,
            device=device, dtype=dtype if device == "cpu" else "auto",
            logging_steps=1, save_steps=0, eval_examples=0)
        result = trainer_module.train(config, show_progress=False, log=lambda message: None, callbacks=[Metered()])
        from core.runs import RunDir

        rows, resolved = RunDir(result.run_dir).metrics(), RunDir(result.run_dir).config()
    walls = [row["wall_time"] for row in rows]
    step_s = [later - earlier for earlier, later in zip([0.0] + walls[:-1], walls)]
    return {
        "step_s": step_s,
        "step_cpu_s": [later - earlier for earlier, later in zip(cpu_marks, cpu_marks[1:])],
        "tokens_per_step": [round(row["tokens_per_second"] * s) for row, s in zip(rows, step_s)],
        "first_loss": {k: v for k, v in rows[0].items() if k.startswith("loss")},
        "lr": resolved["lr"], "lora_r": resolved["lora_r"] if lora else None,
        "mixed_precision": resolved["environment"]["mixed_precision"],
        "mfu": result.summary.get("mfu"),   # over the whole loop, warm-up step included
        **one_time, **meter.figures,
    }


# ==================================================================== variant: the NPO code's loop

def baseline_item(tokenizer, example, max_length: int):
    """The NPO code's `convert_raw_data_to_model_format`, on our chat-template token ids.

    Padded to max_length with EOS (attention 0); labels: -100 on the question, the answer, one EOS, -100.
    """
    import torch

    from core.data import encode_example

    encoded, _ = encode_example(tokenizer, example, max_length)
    eos = tokenizer.eos_token_id
    ids, labels = encoded.input_ids, encoded.labels
    if ids and ids[-1] == eos:  # encode_example appends the EOS; the NPO code adds it as a label only
        ids, labels = ids[:-1], labels[:-1]
    pad = max_length - len(ids)
    input_ids = ids + [eos] * pad
    attention_mask = [1] * len(ids) + [0] * pad
    labels = labels + ([eos] + [-100] * (pad - 1) if pad else [])
    return torch.tensor(input_ids), torch.tensor(labels), torch.tensor(attention_mask)


class BaselineDataset:
    """The NPO code's `TextForgetDatasetQA`: item i = forget i and a seeded random retain example,
    tokenised and padded when fetched (as there, inside the data loader)."""

    def __init__(self, tokenizer, forget, retain, max_length: int):
        self.tokenizer, self.forget, self.retain, self.max_length = tokenizer, forget, retain, max_length

    def __len__(self) -> int:
        return len(self.forget)

    def __getitem__(self, idx: int):
        import torch

        torch.manual_seed(idx)
        retain_idx = (idx + torch.randint(0, len(self.retain), (1,)).item()) % len(self.retain)
        return (baseline_item(self.tokenizer, self.forget[idx], self.max_length),
                baseline_item(self.tokenizer, self.retain[retain_idx], self.max_length))


def baseline_collate(samples):
    import torch

    return tuple(tuple(torch.stack([s[part][k] for s in samples]) for k in range(3)) for part in range(2))


def get_batch_loss(logits, labels):
    """The NPO code's per-sequence summed NLL over full logits."""
    import torch

    shifted_labels = labels[..., 1:].contiguous()
    logits = logits[..., :-1, :].contiguous()
    loss = torch.nn.CrossEntropyLoss(ignore_index=-100, reduction="none")
    return loss(logits.transpose(-1, -2), shifted_labels).sum(dim=-1)


def baseline_loss(model, oracle, forget, retain):
    """`npo_grad_diff` exactly as the NPO code's compute_loss (labels passed, so HF also computes .loss)."""
    import torch
    import torch.nn.functional as F

    input_ids, labels, attention_mask = forget
    outputs = model(input_ids, labels=labels, attention_mask=attention_mask)
    forget_loss_current = get_batch_loss(outputs.logits, labels)
    with torch.no_grad():
        oracle_outputs = oracle(input_ids, labels=labels, attention_mask=attention_mask)
        forget_loss_oracle = get_batch_loss(oracle_outputs.logits, labels)
    neg_log_ratios = forget_loss_current - forget_loss_oracle
    forget_loss = -F.logsigmoid(BETA * neg_log_ratios).mean() * 2 / BETA
    retain_ids, retain_labels, retain_mask = retain
    retain_loss = model(retain_ids, labels=retain_labels, attention_mask=retain_mask).loss
    return 1.0 * forget_loss + 1.0 * retain_loss, forget_loss, retain_loss


def baseline_optimizer(model, total_steps: int):
    """AdamW with transformers Trainer's parameter groups (no decay on biases/norms) and linear schedule."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=LR)
    return optimizer, get_linear_schedule_with_warmup(optimizer, int(total_steps * WARMUP_RATIO), total_steps)


def _batches(loader):
    while True:  # more steps than one epoch: start the next one
        yield from loader


def run_baseline(device: str, total_steps: int) -> dict:
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.data import load_examples
    from core.models import bundled_model_dir

    torch.manual_seed(SEED)
    source = str(bundled_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.pad_token = tokenizer.eos_token
    dataset = BaselineDataset(tokenizer, load_examples(FORGET), load_examples(RETAIN), BASELINE_MAX_LENGTH)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, collate_fn=baseline_collate,
                                         generator=torch.Generator().manual_seed(SEED))
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).to(device)
    oracle_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    oracle = AutoModelForCausalLM.from_pretrained(source, dtype=oracle_dtype).to(device)
    oracle.eval().requires_grad_(False)
    model.config.use_cache = False
    model.train()
    optimizer, scheduler = baseline_optimizer(model, total_steps)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device == "cuda" else contextlib.nullcontext

    meter, step_s, first_loss = PeakMeter(device), [], None
    params = list(model.parameters()) + list(oracle.parameters())
    loop_start_rss_mib = (_status_kib("VmRSS") or 0) / 1024
    meter.start_loop()
    batches = _batches(loader)
    last, last_cpu, step_cpu_s = time.perf_counter(), time.process_time(), []
    for _ in range(total_steps):
        forget, retain = (tuple(t.to(device) for t in part) for part in next(batches))
        with autocast():
            loss, forget_loss, retain_loss = baseline_loss(model, oracle, forget, retain)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if first_loss is None:
            first_loss = {"loss": float(loss), "loss_forget_npo": float(forget_loss),
                          "loss_retain_nll": float(retain_loss)}
        _sync(device)
        now = time.perf_counter()
        step_s.append(now - last)
        step_cpu_s.append(time.process_time() - last_cpu)
        last, last_cpu = now, time.process_time()
    meter.end_loop()
    tokens = 2 * BATCH_SIZE * BASELINE_MAX_LENGTH  # padded forget + retain tokens trained on per step
    return {"step_s": step_s, "step_cpu_s": step_cpu_s, "tokens_per_step": [tokens] * total_steps, "first_loss": first_loss,
            "lr": LR, "oracle_dtype": str(oracle_dtype).removeprefix("torch."),
            "params": sum(p.numel() for p in params), "trainable_params": sum(p.numel() for p in model.parameters()),
            "loop_start_rss_mib": loop_start_rss_mib, **meter.figures}


# ==================================================================== variant: open-unlearning's NPO trainer

def ou_item(tokenizer, example) -> dict:
    """One sample as open-unlearning's QA datasets give it: the chat-template ids, the question masked."""
    import torch

    from core.data import encode_example

    encoded, _ = encode_example(tokenizer, example, 512)
    return {"input_ids": torch.tensor(encoded.input_ids), "labels": torch.tensor(encoded.labels),
            "attention_mask": torch.ones(len(encoded.input_ids), dtype=torch.long)}


class OpenUnlearningDataset:
    """Its ForgetRetainDataset: item i = forget i and a random retain example (anchor: forget)."""

    def __init__(self, tokenizer, forget, retain):
        import random

        self.forget = [ou_item(tokenizer, ex) for ex in forget]
        self.retain = [ou_item(tokenizer, ex) for ex in retain]
        self.rng = random.Random(SEED)

    def __len__(self) -> int:
        return len(self.forget)

    def __getitem__(self, idx: int) -> dict:
        return {"forget": self.forget[idx], "retain": self.retain[self.rng.randrange(len(self.retain))]}


def ou_collate(pad_id: int):
    """Its DataCollatorForSupervisedDataset: every part padded to the longest sequence in the batch."""
    import torch

    def pad(rows, key, value):
        return torch.nn.utils.rnn.pad_sequence([r[key] for r in rows], batch_first=True, padding_value=value)

    def collate(samples):
        return {part: {"input_ids": pad([s[part] for s in samples], "input_ids", pad_id),
                       "labels": pad([s[part] for s in samples], "labels", -100),
                       "attention_mask": pad([s[part] for s in samples], "attention_mask", 0)}
                for part in ("forget", "retain")}
    return collate


def _bf16_on_cpu(dtype: str) -> bool:
    """--dtype auto on a CPU with bf16 units: open-unlearning gets the HF Trainer's bf16 autocast, as ours."""
    import torch

    from core.models import mixed_precision

    return mixed_precision(dtype, torch.device("cpu")) == "bf16"


def run_open_unlearning(device: str, total_steps: int, dtype: str = "float32") -> dict:
    """open-unlearning's NPO (src/trainer/unlearn/npo.py on grad_diff.py) as a Hugging Face Trainer: its
    compute_loss forwards the model and a deep-copied reference model on each forget batch (the DPO helper
    with only a "lose" side), plus the retain NLL (model(**retain).loss), weights 1/1."""
    import copy

    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from core.data import load_examples
    from core.models import bundled_model_dir, load_tokenizer

    torch.manual_seed(SEED)
    source = str(bundled_model_dir())
    tokenizer = load_tokenizer(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model.config.use_cache = False
    reference = copy.deepcopy(model).to(device).eval()   # open-unlearning's _prepare_ref_model
    meter, marks, first_loss, tokens = PeakMeter(device), [], {}, []

    def sequence_loss(m, inputs):   # its compute_batch_nll: per-sequence summed NLL over full logits
        outputs = m(**inputs)
        labels = inputs["labels"][..., 1:]
        logits = outputs.logits[..., :-1, :]
        return F.cross_entropy(logits.transpose(-1, -2), labels, ignore_index=-100, reduction="none").sum(-1), outputs

    class NPOTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            tokens.append(inputs["forget"]["input_ids"].numel() + inputs["retain"]["input_ids"].numel())  # padded
            lose_loss, outputs = sequence_loss(model, inputs["forget"])
            with torch.no_grad():
                lose_ref_loss, _ = sequence_loss(reference, inputs["forget"])
            lose_log_ratio = -(lose_loss - lose_ref_loss)
            forget_loss = -2 / BETA * F.logsigmoid(BETA * (0.0 - lose_log_ratio)).mean()
            retain_loss = model(**inputs["retain"]).loss
            loss = 1.0 * forget_loss + 1.0 * retain_loss
            if not first_loss:
                first_loss.update(loss=float(loss), loss_forget_npo=float(forget_loss), loss_retain_nll=float(retain_loss))
            return (loss, outputs) if return_outputs else loss

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            meter.start_loop()
            marks.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, args, state, control, **kwargs):
            _sync(device)
            marks.append((time.perf_counter(), time.process_time()))

        def on_train_end(self, args, state, control, **kwargs):
            meter.end_loop()

    loop_start_rss_mib = (_status_kib("VmRSS") or 0) / 1024
    with tempfile.TemporaryDirectory(prefix="bench-ou-") as tmp:
        arguments = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=BATCH_SIZE, learning_rate=LR, weight_decay=WEIGHT_DECAY,
            warmup_steps=int(total_steps * WARMUP_RATIO), max_steps=total_steps, lr_scheduler_type="linear",
            max_grad_norm=MAX_GRAD_NORM, logging_steps=1, save_strategy="no", report_to=[], seed=SEED,
            use_cpu=device == "cpu", bf16=device == "cuda" or _bf16_on_cpu(dtype), remove_unused_columns=False, dataloader_num_workers=0,
            disable_tqdm=True)
        dataset = OpenUnlearningDataset(tokenizer, load_examples(FORGET), load_examples(RETAIN))
        trainer = NPOTrainer(model=model, args=arguments, train_dataset=dataset,
                             data_collator=ou_collate(tokenizer.pad_token_id), callbacks=[Clock()])
        trainer.train()
    step_s = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    step_cpu_s = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    params = list(model.parameters()) + list(reference.parameters())
    return {"step_s": step_s, "step_cpu_s": step_cpu_s, "tokens_per_step": tokens[:len(step_s)], "first_loss": first_loss,
            "lr": LR, "params": sum(p.numel() for p in params),
            "trainable_params": sum(p.numel() for p in model.parameters()),
            "loop_start_rss_mib": loop_start_rss_mib, **meter.figures}


# ==================================================================== child entry point

def child(variant: str, device: str, total_steps: int, result_path: str, dtype: str) -> None:
    import torch

    started = time.perf_counter()
    if variant == "baseline":
        result = run_baseline(device, total_steps)
    elif variant == "open_unlearning":
        result = run_open_unlearning(device, total_steps, dtype)
    else:
        result = run_ours(device, total_steps, lora=variant.startswith("ours_lora"),
                          checkpointing=variant.endswith("_gc"), dtype=dtype)
    result.update(variant=variant, device=device, threads=torch.get_num_threads(),
                  process_s=round(time.perf_counter() - started, 1), exit_peak_rss_mib=peak_rss_mib())
    Path(result_path).write_text(json.dumps(result))


def run_child(variant: str, device: str, total_steps: int, dtype: str) -> dict:
    """One variant in a fresh interpreter; its figures come back through a JSON file."""
    return child_result(Path(__file__).resolve(), ["--child", variant, "--device", device, "--total-steps",
                                                   str(total_steps), "--dtype", dtype], variant)


def child_result(script: Path, arguments: list[str], label: str) -> dict:
    """`python SCRIPT ARGUMENTS --result FILE` in a fresh interpreter (its own peak memory); the figures it
    writes to FILE as JSON."""
    with tempfile.TemporaryDirectory(prefix="bench-child-") as tmp:
        result_path = Path(tmp) / "result.json"
        command = [sys.executable, str(script), *arguments, "--result", str(result_path)]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        if done.returncode != 0 or not result_path.is_file():
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
            raise SystemExit(f"the {label} run failed (exit status {done.returncode})")
        return json.loads(result_path.read_text())


# ==================================================================== aggregation and report

def summarise(runs: list[dict], warmup: int, device: str) -> dict:
    """Per variant: pooled steady-state step times, memory (max over its runs), one-time costs."""
    memory_key = "peak_cuda_mib" if device == "cuda" else "peak_rss_mib"
    summary = {}
    for variant in VARIANTS:
        mine = [run for run in runs if run["variant"] == variant]
        if not mine:
            continue
        steady = [s for run in mine for s in run["step_s"][warmup:]]
        steady_cpu = [s for run in mine for s in run.get("step_cpu_s", [])[warmup:]]
        tokens = [t for run in mine for t in run["tokens_per_step"][warmup:]]

        def worst(key):
            values = [run[key] for run in mine if run.get(key) is not None]
            return max(values) if values else None

        summary[variant] = {
            "runs": len(mine), "measured_steps": len(steady),
            "median_step_s": statistics.median(steady), "mean_step_s": statistics.fmean(steady),
            "min_step_s": min(steady), "max_step_s": max(steady),
            "median_cpu_step_s": statistics.median(steady_cpu) if steady_cpu else None,
            "mean_tokens_per_step": statistics.fmean(tokens),
            "memory_mib": worst(memory_key), "peak_rss_mib": worst("peak_rss_mib"),
            "loop_peak_rss_mib": worst("loop_peak_rss_mib"), "setup_peak_rss_mib": worst("setup_peak_rss_mib"),
            "peak_cuda_mib": worst("peak_cuda_mib"), "exit_peak_rss_mib": worst("exit_peak_rss_mib"),
            "loop_start_rss_mib": worst("loop_start_rss_mib"), "trainable_params": mine[0].get("trainable_params"),
            "reference_nll_s": statistics.fmean([r["reference_nll_s"] for r in mine]) if "reference_nll_s" in mine[0] else None,
            "first_loss": mine[0]["first_loss"],
            "mfu": statistics.fmean(mfus) if (mfus := [r["mfu"] for r in mine if r.get("mfu")]) else None,
        }
    return summary


def ratios(summary: dict) -> list[dict]:
    rows = []
    for name, top, bottom, metric, goal, sense in GOALS:
        if top not in summary or bottom not in summary:
            continue
        if metric.startswith("throughput"):  # steps per second: the inverse ratio of seconds per step
            key = "median_cpu_step_s" if metric == "throughput_cpu" else "median_step_s"
            if summary[top][key] is None or summary[bottom][key] is None:
                continue
            value = summary[bottom][key] / summary[top][key]
        else:
            value = summary[top]["memory_mib"] / summary[bottom]["memory_mib"]
        met = None if goal is None else (value >= goal if sense == "ge" else value <= goal)
        rows.append({"name": name, "value": value, "goal": goal, "sense": sense, "met": met})
    return rows


def _fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def report(summary: dict, ratio_rows: list[dict], device: str, warmup: int) -> str:
    memory_name = "CUDA peak MiB" if device == "cuda" else "peak RSS MiB"
    lines = [f"{'variant':<40} {'s/step':>7} {'min-max':>13} {'CPU s':>6} {'n':>3} {'tok/step':>8} "
             f"{memory_name:>13} {'loop-only':>9} {'MFU':>6}  one-time"]
    for variant, row in summary.items():
        one_time = f"reference NLL cache {row['reference_nll_s']:.1f} s" if row["reference_nll_s"] is not None else ""
        lines.append(
            f"{LABELS[variant]:<40} {row['median_step_s']:>7.2f} "
            f"{row['min_step_s']:>6.2f}-{row['max_step_s']:<6.2f} {_fmt(row['median_cpu_step_s'], '>6.1f'):>6} "
            f"{row['measured_steps']:>3} "
            f"{row['mean_tokens_per_step']:>8.0f} {_fmt(row['memory_mib'], '>13.0f'):>13} "
            f"{_fmt(row['loop_peak_rss_mib'] if device == 'cpu' else None, '>9.0f'):>9} "
            f"{_fmt(row['mfu'], '>6.1%'):>6}  {one_time}")
    lines.append(f"(s/step: median wall seconds of steady-state steps, the first {warmup} of every run skipped; "
                 "CPU s: median process CPU seconds per step, all threads;\n n: steps measured; tok/step: tokens "
                 "through the model per step: ours counts non-padding tokens, the NPO baseline its 500-token padded\n "
                 "rows, open-unlearning its rows padded to the batch's longest;\n "
                 "peak: max over runs, up to the end of the training loop; loop-only: peak RSS within the loop;\n "
                 "MFU: ours' training FLOPs per second over this machine's measured matmul peak, core/flops.py)")
    lines.append("")
    lines.append(f"{'ratio':<34} {'measured':>9} {'goal':>9}  met")
    for row in ratio_rows:
        if row["goal"] is None:
            lines.append(f"{row['name']:<34} {row['value']:>8.2f}x {'-':>9}  -")
            continue
        goal = (">= " if row["sense"] == "ge" else "<= ") + f"{row['goal']:.2f}x"
        lines.append(f"{row['name']:<34} {row['value']:>8.2f}x {goal:>9}  {'yes' if row['met'] else 'NO'}")
    return "\n".join(lines)


def machine_info(device: str) -> dict:
    import torch

    cpu = "unknown"
    try:
        cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE).group(1)
    except (OSError, AttributeError):
        pass
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu": cpu, "cpus": os.cpu_count()}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_rounds(variants: tuple[str, ...], device: str, warmup: int, steps: int, rounds: int,
               dtype: str) -> list[dict]:
    runs = []
    for index in range(rounds):
        order = variants if index % 2 == 0 else tuple(reversed(variants))  # alternate who goes first
        for variant in order:
            print(f"[round {index + 1}/{rounds}] {variant}: {warmup} warm-up + {steps} measured steps ...", flush=True)
            run = run_child(variant, device, warmup + steps, dtype)
            steady = run["step_s"][warmup:]
            cpu = statistics.median(run["step_cpu_s"][warmup:])
            print(f"    {statistics.median(steady):.2f} s/step, {cpu:.1f} CPU s/step "
                  f"(steps: {', '.join(f'{s:.2f}' for s in run['step_s'])}), "
                  f"peak RSS {run['peak_rss_mib']:.0f} MiB, process {run['process_s']:.0f} s", flush=True)
            runs.append(run)
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="measured steps per variant and round (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="steps skipped at the start of every run (default 1)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of all variants, order alternating (default 2)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 warm-up + 1 measured step, 1 round")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated, from {', '.join(VARIANTS)} (default: {','.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    parser.add_argument("--dtype", choices=("float32", "auto"), default="float32",
                        help="training dtype on the CPU of ours and open-unlearning (`bf16=True` in its HF "
                             "Trainer) (default float32; auto: bf16 where the CPU has it); the NPO baseline stays fp32")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--total-steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this machine has no usable CUDA GPU")
    if args.child:
        child(args.child, device, args.total_steps, args.result, args.dtype)
        return 0
    if args.quick:
        args.steps, args.warmup, args.rounds = 1, 1, 1
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--steps and --rounds must be at least 1, --warmup at least 0")
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        parser.error(f"--variants: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(VARIANTS)}")

    command = "python benchmarks/trainer.py " + " ".join(sys.argv[1:] if argv is None else argv)
    machine = machine_info(device)
    print(f"{command.strip()}\ndevice {device}; {machine['cpu']}, {machine['cpus']} CPUs, "
          f"{machine.get('memory_gib', '?')} GiB; torch {machine['torch']}"
          + (f"; GPU {machine['gpu']}" if device == "cuda" else ""), flush=True)
    started = time.time()
    runs = run_rounds(variants, device, args.warmup, args.steps, args.rounds, args.dtype)
    summary = summarise(runs, args.warmup, device)
    ratio_rows = ratios(summary)
    print()
    print(report(summary, ratio_rows, device, args.warmup))
    print(f"\ntotal {time.time() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": command.strip(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": device,
            "machine": machine, "settings": {"steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
                                             "variants": list(variants), "ours_dtype": args.dtype,
                                             "batch_size": BATCH_SIZE, "lr": LR, "forget": FORGET, "retain": RETAIN,
                                             "baseline_max_length": BASELINE_MAX_LENGTH},
            "summary": summary, "ratios": ratio_rows, "runs": runs}, indent=2))
        print(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
