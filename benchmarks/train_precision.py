"""Training in bf16 against fp32, side by side in one run: seconds per NPO+RT step, MFU, and whether the
loss curve stays within fp32's own seed-to-seed noise.

    python benchmarks/train_precision.py               # 20 steps per run, full fine-tuning and LoRA (~15 min)
    python benchmarks/train_precision.py --steps 5     # a quick look

Every run is NPO+RT on TOFU forget01 + retain99, the bundled model, batch 4, in a fresh subprocess so that
one run's memory or threads do not touch the next. Per setting (full, LoRA):
  fp32, seed 42 and seed 43   the reference curve and its noise (another seed = another data order)
  auto, seed 42               bf16 mixed precision where the CPU/GPU runs it fast (else fp32 again)
"Within noise": at every step, |auto - fp32| on the same seed is at most the largest |seed 43 - seed 42|
seen over the run (the per-step spread of the data order), for the loss and for the forget NLL.
Seconds per step: the median over steps 2..N of `wall_time` differences in metrics.jsonl (step 1 warms up).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = (("fp32", "float32", 42), ("fp32 seed 43", "float32", 43), ("auto", "auto", 42))


def child(lora: bool, dtype: str, seed: int, steps: int, out: str) -> None:
    sys.path.insert(0, str(REPO))
    from core.config import UnlearnConfig
    from core.trainer import train

    config = UnlearnConfig(model="bundled", method="npo_rt", forget="tofu:forget01", retain="tofu:retain99",
                           out=out, max_steps=steps, batch_size=4, lora=lora, dtype=dtype, seed=seed,
                           save_steps=0, eval_examples=0, device="cpu")
    train(config, show_progress=False, log=lambda message: None)


def run(lora: bool, dtype: str, seed: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="train-precision-") as tmp:   # the run's 0.5 GB model goes with it
        out = Path(tmp) / "run"
        code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from benchmarks.train_precision import child; "
                f"child({lora}, {dtype!r}, {seed}, {steps}, {str(out)!r})")
        subprocess.run([sys.executable, "-c", code], check=True)
        from core.runs import RunDir, read_json

        run = RunDir(out)
        rows, summary, config = run.metrics(), read_json(run.summary_path), run.config()
    walls = [row["wall_time"] for row in rows]
    return {"dtype": config["dtype"], "seconds_per_step": statistics.median(b - a for a, b in zip(walls, walls[1:])),
            "mfu": summary.get("mfu"), "tokens_per_second": summary.get("tokens_per_second"),
            "loss": [row["loss"] for row in rows], "forget_nll": [row["forget_nll"] for row in rows]}


def within_noise(runs: dict, key: str) -> dict:
    ref, other, auto = runs["fp32"][key], runs["fp32 seed 43"][key], runs["auto"][key]
    noise = max(abs(a - b) for a, b in zip(ref, other))
    gap = max(abs(a - b) for a, b in zip(ref, auto))
    return {"largest_gap": gap, "seed_noise": noise, "within": gap <= noise}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", default=None, help="also write every figure here")
    args = parser.parse_args(argv)
    report = {}
    for setting, lora in (("full", False), ("lora", True)):
        runs = {name: run(lora, dtype, seed, args.steps) for name, dtype, seed in RUNS}
        report[setting] = {"runs": runs, "speedup": runs["fp32"]["seconds_per_step"] / runs["auto"]["seconds_per_step"],
                           "loss": within_noise(runs, "loss"), "forget_nll": within_noise(runs, "forget_nll")}
        r = report[setting]
        print(f"{setting}: fp32 {runs['fp32']['seconds_per_step']:.2f} s/step (MFU {runs['fp32']['mfu']:.1%}), "
              f"auto={runs['auto']['dtype']} {runs['auto']['seconds_per_step']:.2f} s/step (MFU {runs['auto']['mfu']:.1%}): "
              f"{r['speedup']:.2f}x; loss gap {r['loss']['largest_gap']:.3f} vs seed noise {r['loss']['seed_noise']:.3f} "
              f"({'within' if r['loss']['within'] else 'OUTSIDE'}); forget NLL gap {r['forget_nll']['largest_gap']:.3f} "
              f"vs {r['forget_nll']['seed_noise']:.3f} ({'within' if r['forget_nll']['within'] else 'OUTSIDE'})",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
