"""Benchmark: what the memory savers cost and save on the bundled SmolLM2-135M, side by side in one run.

    python benchmarks/memory.py                      # every variant: 1 warm-up + 2 measured steps each
    python benchmarks/memory.py --variants full,qlora_4bit --steps 1
    python benchmarks/memory.py --curve 50           # forget NLL per step: fp32 / 8-bit / bf16 AdamW moments
                                                     # (the three runs side by side, full fine-tuning, same seed)
    python benchmarks/memory.py --json memory.json   # also write every figure as JSON

Variants (npo_rt, TOFU forget01 + retain99, batch 4, fp32 on this CPU unless --dtype auto, as
benchmarks/trainer.py measures ours):

full               full fine-tuning, torch AdamW (fp32 moments)
full_8bit_moments  the same with --optim adamw_8bit (bitsandbytes AdamW8bit)
full_bf16_moments  the same with --optim adamw_bf16 (core/optimizers.py)
lora               LoRA (default rank) on the full-precision base
lora_gc            LoRA + gradient checkpointing
qlora_4bit         LoRA on the base held in 4-bit nf4 (--load-in-4bit)
qlora_4bit_gc      the same + gradient checkpointing
full_quant_aware   full fine-tuning with --quant-aware 1 (q4_0): the forget term again on fake-quantised weights
lora_quant_aware   LoRA with --quant-aware 1

Each runs in its own fresh interpreter (benchmarks/trainer.py's child pattern and meters: peak RSS =
VmHWM up to the end of the loop; seconds per step from metrics.jsonl, the warm-up steps dropped). The
frozen base's resident weights are measured apart, in another fresh interpreter per kind: the bytes of
every parameter and buffer of the model as the trainer holds it (bitsandbytes' quantisation constants
included), for the bf16 LoRA base (`--dtype auto` on a CPU with bf16 units or a GPU: Linear weights bf16,
embeddings and norms fp32) and the 4-bit base.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/memory.py` puts benchmarks/ first, not the repo
    sys.path.insert(0, str(REPO))

from benchmarks.trainer import (BATCH_SIZE, BETA, FORGET, LR, MAX_GRAD_NORM, RETAIN, SEED, WARMUP_RATIO,  # noqa: E402
                                WEIGHT_DECAY, PeakMeter, _status_kib, child_result, machine_info, peak_rss_mib)

VARIANTS = {
    "full": {},
    "full_8bit_moments": {"optim": "adamw_8bit"},
    "full_bf16_moments": {"optim": "adamw_bf16"},
    "lora": {"lora": True},
    "lora_gc": {"lora": True, "gradient_checkpointing": True},
    "qlora_4bit": {"lora": True, "load_in_4bit": True},
    "qlora_4bit_gc": {"lora": True, "load_in_4bit": True, "gradient_checkpointing": True},
    "full_quant_aware": {"quant_aware": 1.0},
    "lora_quant_aware": {"lora": True, "quant_aware": 1.0},
}
CURVE_OPTIMIZERS = ("adamw", "adamw_8bit", "adamw_bf16")
CURVE_EVAL = 8   # forget/retain examples scored before and after a curve's run (and the knowledge check's)
OPEN_UNLEARNING_PEAK_MIB = 4636   # docs/benchmarks.md, session 7: its fp32 peak RSS on this CPU (4657 in session 6)


def config_for(settings: dict, out: str, steps: int, dtype: str, eval_examples: int = 0, batch_size: int = BATCH_SIZE):
    from core.config import UnlearnConfig

    return UnlearnConfig(
        model="bundled", method="npo_rt", forget=FORGET, retain=RETAIN, out=out, batch_size=batch_size,
        lr=None if settings.get("lora") else LR, weight_decay=WEIGHT_DECAY, warmup_ratio=WARMUP_RATIO,
        max_grad_norm=MAX_GRAD_NORM, method_params={"beta": BETA}, seed=SEED, max_steps=steps, device="cpu",
        dtype=dtype, logging_steps=1, save_steps=0, eval_examples=eval_examples, **settings)


# ==================================================================== children (each in a fresh interpreter)

def run_variant(variant: str, steps: int, dtype: str) -> dict:
    import core.trainer as trainer_module
    from core.runs import RunDir

    meter, one_time = PeakMeter("cpu"), {}

    class Metered(trainer_module.Callback):
        def on_loop_begin(self, state):
            one_time.update(trainable_params=state.trainable_params,
                            loop_start_rss_mib=round((_status_kib("VmRSS") or 0) / 1024, 1))
            meter.start_loop()

        def on_loop_end(self, state, outcome):
            meter.end_loop()

    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        config = config_for(VARIANTS[variant], str(Path(tmp) / "run"), steps, dtype)
        result = trainer_module.train(config, show_progress=False, log=lambda message: None, callbacks=[Metered()])
        walls = [row["wall_time"] for row in RunDir(result.run_dir).metrics()]
    return {"step_s": [b - a for a, b in zip([0.0] + walls[:-1], walls)], **one_time, **meter.figures}


def resident_weights(kind: str) -> dict:
    """Bytes of the frozen base as the trainer holds it: `lora_bf16` (Linear weights bf16, the rest fp32) or
    `qlora_4bit` (Linear weights nf4 with their quantisation constants, the rest fp32)."""
    import torch

    from core.models import frozen_linears_in_bf16, load_model, load_quantized_model, resolve_model

    source = resolve_model("bundled")
    if kind == "qlora_4bit":
        model = load_quantized_model(source, 4, torch.device("cpu"))
    else:
        model = load_model(source)
        frozen_linears_in_bf16(model)
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    for module in model.modules():   # nf4's absmax and code live beside the packed weight, not as parameters
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:
            tensors.update({id(t): t for t in state.as_dict(packed=True).values() if torch.is_tensor(t)})
    linear = sum(p.numel() * p.element_size() for name, p in model.named_parameters() if ".layers." in name
                 and p.dim() == 2)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    return {"kind": kind, "resident_mib": round(total / 2**20, 1), "layer_linears_packed_mib": round(linear / 2**20, 1)}


def forgetting_curve(optim: str, steps: int, dtype: str, batch_size: int) -> dict:
    """Full fine-tuning for `steps` steps with `optim`'s moments; the run is kept in the temp folder
    (bench-curve-OPTIM), so that a long curve's metrics.jsonl can be read while it runs."""
    import core.trainer as trainer_module
    from core.runs import RunDir

    out = Path(tempfile.gettempdir()) / f"bench-curve-{optim}"
    config = replace(config_for({"optim": optim}, str(out), steps, dtype, CURVE_EVAL, batch_size), overwrite=True)
    result = trainer_module.train(config, show_progress=False, log=lambda message: None)
    rows = RunDir(result.run_dir).metrics()
    return {"optim": optim, "forget_nll": [row["forget_nll"] for row in rows],
            "retain_nll": [row.get("retain_nll") for row in rows], "before": result.summary["before"],
            "after": result.summary["after"], "seconds": result.summary["wall_seconds"]}


def child(task: str, name: str, steps: int, dtype: str, result_path: str, batch_size: int = BATCH_SIZE) -> None:
    started = time.perf_counter()
    if task == "variant":
        result = run_variant(name, steps, dtype)
    elif task == "weights":
        result = resident_weights(name)
    else:
        result = forgetting_curve(name, steps, dtype, batch_size)
    result.update(name=name, process_s=round(time.perf_counter() - started, 1), exit_peak_rss_mib=peak_rss_mib())
    Path(result_path).write_text(json.dumps(result))


def run_child(task: str, name: str, steps: int, dtype: str, batch_size: int = BATCH_SIZE) -> dict:
    return child_result(Path(__file__).resolve(), ["--child", task, name, "--steps", str(steps), "--dtype", dtype,
                                                   "--batch-size", str(batch_size)], f"{task} {name}")


# ==================================================================== reports

def memory_report(runs: dict, weights: dict, warmup: int) -> str:
    full = runs.get("full", {}).get("peak_rss_mib")
    lines = [f"{'variant':<20} {'s/step':>7} {'peak RSS MiB':>13} {'loop-only':>10} {'/ full':>7} "
             f"{'/ open-unl.':>11}"]
    for name, run in runs.items():
        step = statistics.median(run["step_s"][warmup:] or run["step_s"])
        peak = run["peak_rss_mib"]
        lines.append(f"{name:<20} {step:>7.2f} {peak:>13.0f} {run.get('loop_peak_rss_mib') or 0:>10.0f} "
                     f"{peak / full if full else float('nan'):>6.2f}x {peak / OPEN_UNLEARNING_PEAK_MIB:>10.2f}x")
    if len(weights) == 2:
        bf16, nf4 = weights["lora_bf16"], weights["qlora_4bit"]
        lines += ["", f"resident frozen base: bf16 LoRA {bf16['resident_mib']} MiB, 4-bit {nf4['resident_mib']} MiB "
                      f"= {nf4['resident_mib'] / bf16['resident_mib']:.2f}x (goal <= 0.3x); the layers' Linear "
                      f"weights alone {nf4['layer_linears_packed_mib']} / {bf16['layer_linears_packed_mib']} MiB"]
    return "\n".join(lines)


def curve_report(curves: list[dict], every: int = 5) -> str:
    names = [c["optim"] for c in curves]
    lines = ["step  " + "  ".join(f"{n:>11}" for n in names)]
    for index in range(every - 1, len(curves[0]["forget_nll"]), every):
        lines.append(f"{index + 1:>4}  " + "  ".join(f"{c['forget_nll'][index]:>11.4f}" for c in curves))
    lines.append("eval  " + "  ".join(f"{c['after']['forget_nll']:>11.4f}" for c in curves)
                 + f"   (forget NLL of the first {CURVE_EVAL} forget examples after the run)")
    lines.append("retn  " + "  ".join(f"{c['after'].get('retain_nll', float('nan')):>11.4f}" for c in curves)
                 + f"   (retain NLL, first {CURVE_EVAL} retain examples)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2, help="measured steps per variant (after the warm-up)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "auto"))
    parser.add_argument("--curve", type=int, default=0, metavar="STEPS",
                        help="instead: the forget NLL per step over STEPS steps for each optimizer's moments")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                        help="forget examples per step (the curve may use fewer to be quicker; the variants use 4)")
    parser.add_argument("--optims", default=",".join(CURVE_OPTIMIZERS), help="the curve's optimizers")
    parser.add_argument("--json")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.steps, args.dtype, args.result, args.batch_size)
        return
    figures = {"machine": machine_info("cpu"), "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d")}
    if args.curve:
        optims = args.optims.split(",")
        with ThreadPoolExecutor(len(optims)) as pool:   # independent runs: side by side
            figures["curves"] = list(pool.map(
                lambda optim: run_child("curve", optim, args.curve, args.dtype, args.batch_size), optims))
        print(curve_report(figures["curves"]))
    else:
        runs = {}
        for name in args.variants.split(","):
            print(f"{name}: {args.warmup} warm-up + {args.steps} measured steps ...", flush=True)
            runs[name] = run_child("variant", name, args.warmup + args.steps, args.dtype)
            print(f"    steps {', '.join(f'{s:.2f}' for s in runs[name]['step_s'])} s, "
                  f"peak RSS {runs[name]['peak_rss_mib']:.0f} MiB", flush=True)
        weights = {kind: run_child("weights", kind, 0, args.dtype) for kind in ("lora_bf16", "qlora_4bit")}
        figures.update(runs=runs, weights=weights)
        print(memory_report(runs, weights, args.warmup))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
