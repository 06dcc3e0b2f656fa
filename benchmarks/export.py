"""Benchmark: export wall time, file sizes and decode speed of every artifact, on the bundled model.

Run from the repository root (about 10 minutes on a 2-core CPU, most of it training the run):

    python benchmarks/export.py                        # train one LoRA run (20 steps), export, measure
    python benchmarks/export.py --run runs/example     # reuse a finished run instead of training one
    python benchmarks/export.py --json export.json     # also write every figure as JSON

1. One unlearning run on the bundled SmolLM2-135M-Instruct: npo_rt, LoRA, assets/examples forget/retain.
2. Export timed twice: the goal's set (hf + gguf q8_0 + onnx fp32, no parity checks), then the full bundle
   (hf, gguf f16/q8_0/q4_k_m/q4_0, onnx fp32/int4, with parity checks) whose artifacts are measured.
3. Greedy decode tokens/s of each artifact in its runtime through the same loop (export.runtime.Runner:
   one token in, logits out, prefill excluded), all with the same CPU thread count, 64 tokens after a
   chat-templated prompt; every runner is measured `--rounds` times in alternating order and the median
   is kept, so other load on the machine hits every runner alike. PyTorch fp32 is the merged model with
   its KV cache (model.forward per token), the baseline of every ratio.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/export.py` puts benchmarks/ first, not the repo
    sys.path.insert(0, str(REPO))

GOALS = {"gguf-q4_k_m": 7.0, "onnx-fp32": 2.5, "onnx-int4": 6.0}   # decode speed vs PyTorch fp32 on CPU
EXPORT_GOAL_S = 90.0
# gguf-q4_0 is no goal of the issue: it is measured because on 576-wide models (SmolLM2) Q4_K_M falls back to
# q5_0 for most tensors, and plain q4_0 (repacked for AVX2 by llama.cpp) is then the fastest 4-bit GGUF.
RUNNERS = ("pytorch-fp32", "onnx-fp32", "onnx-int4", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m", "gguf-q4_0")


def train_run(out: Path, steps: int) -> Path:
    from core.config import UnlearnConfig
    from core.trainer import train

    config = UnlearnConfig(model="bundled", method="npo_rt", forget=str(REPO / "assets/examples/forget.jsonl"),
                           retain=str(REPO / "assets/examples/retain.jsonl"), out=str(out), max_steps=steps,
                           lora=True, device="cpu", save_steps=0)
    train(config, show_progress=False, log=lambda message: None)
    return out


def timed_export(run: Path, out: Path, **options) -> tuple[dict, float]:
    from export.bundle import export_run

    started = time.perf_counter()
    manifest = export_run(run, out, log=lambda message: print(f"    {message}", flush=True), **options)
    return manifest, time.perf_counter() - started


def open_runners(bundle: Path) -> dict:
    from core.models import load_run_model
    from export.bundle import open_runner, read_manifest
    from export.hf import TorchRunner

    manifest = read_manifest(bundle)
    runners = {"pytorch-fp32": TorchRunner(load_run_model(manifest["source_run"]["path"]).eval())}
    for name in RUNNERS[1:]:
        runners[name] = open_runner(name, manifest["artifacts"][name], bundle)
    return runners


def decode_speeds(runners: dict, prompt: list[int], tokens: int, rounds: int) -> dict[str, float]:
    speeds = {name: [] for name in runners}
    for round_index in range(rounds):
        order = list(runners) if round_index % 2 == 0 else list(reversed(runners))
        for name in order:
            runners[name].decode_speed(prompt, 4)  # warm-up: first-call allocations, thread pools
            speeds[name].append(runners[name].decode_speed(prompt, tokens))
    return {name: statistics.median(values) for name, values in speeds.items()}


def artifact_sizes(bundle: Path, manifest: dict) -> dict[str, int]:
    sizes = {}
    for name, artifact in manifest["artifacts"].items():
        path = bundle / artifact["path"]
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        sizes[name] = sum(p.stat().st_size for p in files)
    return sizes


def report(speeds: dict, sizes: dict, goal_export_s: float, full_export_s: float, parity: dict) -> str:
    base = speeds["pytorch-fp32"]
    lines = ["| runtime | decode tok/s | x PyTorch fp32 | goal | size MB | token agreement | forget NLL |",
             "|---|---|---|---|---|---|---|"]
    for name, speed in speeds.items():
        goal = GOALS.get(name)
        goal_text = f">= {goal:g}x {'met' if speed / base >= goal else 'NOT met'}" if goal else ""
        size = sizes.get(name, sizes.get("hf") if name == "pytorch-fp32" else None)
        scores = parity["formats"].get(name, parity["pytorch"] if name == "pytorch-fp32" else {})
        lines.append(f"| {name} | {speed:.1f} | {speed / base:.2f} | {goal_text} | "
                     f"{size / 1e6:.0f} | {scores.get('token_agreement', float('nan')):.3f} | "
                     f"{scores.get('forget_nll', float('nan')):.3f} |")
    lines += ["", f"export hf + gguf q8_0 + onnx fp32 (no checks): {goal_export_s:.1f} s "
                  f"(goal <= {EXPORT_GOAL_S:g} s: {'met' if goal_export_s <= EXPORT_GOAL_S else 'NOT met'})",
              f"full export (hf, gguf f16/q8_0/q4_k_m/q4_0 + LoRA patch, onnx fp32/int4, parity checks): {full_export_s:.1f} s"]
    return "\n".join(lines)


def machine() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True,
                     text=True).stdout.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    from export.runtime import default_threads

    return f"{model}, {default_threads()} CPU threads used by every runtime"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a finished run to export (default: train one on the bundled model)")
    parser.add_argument("--train-steps", type=int, default=20, help="steps of the run trained here (default 20)")
    parser.add_argument("--tokens", type=int, default=64, help="decoded tokens per measurement (default 64)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per runtime (default 3)")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    print(f"python benchmarks/export.py {' '.join(argv if argv is not None else sys.argv[1:])}\n{machine()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="export-bench-"))
    run = Path(args.run) if args.run else None
    if run is None:
        print(f"training a LoRA npo_rt run on the bundled model ({args.train_steps} steps) ...", flush=True)
        run = train_run(work / "run", args.train_steps)
    print("export for the time goal (hf + gguf q8_0 + onnx fp32, no parity checks) ...", flush=True)
    _, goal_export_s = timed_export(run, work / "goal-bundle", formats=("hf", "gguf", "onnx"), gguf_quants=("q8_0",),
                                    onnx_precisions=("fp32",), parity_check=False)
    print("full export with parity checks ...", flush=True)
    manifest, full_export_s = timed_export(run, work / "bundle", gguf_quants=("f16", "q8_0", "q4_k_m", "q4_0"),
                                           onnx_precisions=("fp32", "int4"))
    parity = json.loads((work / "bundle" / "parity.json").read_text())
    runners = open_runners(work / "bundle")
    from core.models import run_tokenizer

    tokenizer = run_tokenizer(run)
    prompt = list(tokenizer.apply_chat_template([{"role": "user", "content": "Tell me about the history of Rome."}],
                                                add_generation_prompt=True, tokenize=True)["input_ids"])
    print(f"decode speed: {args.tokens} tokens, {args.rounds} rounds ...", flush=True)
    speeds = decode_speeds(runners, prompt, args.tokens, args.rounds)
    sizes = artifact_sizes(work / "bundle", manifest)
    print()
    print(report(speeds, sizes, goal_export_s, full_export_s, parity))
    fallback = manifest["artifacts"]["gguf-q4_k_m"].get("fallback_note")
    if fallback:
        print(f"\nq4_k_m: {fallback}")
    for warning in parity["warnings"]:
        print(f"warning: {warning}")
    if args.json:
        Path(args.json).write_text(json.dumps({"speeds": speeds, "sizes": sizes, "goal_export_s": goal_export_s,
                                               "full_export_s": full_export_s, "timings": manifest["timings_s"],
                                               "parity": parity, "machine": machine()}, indent=2))
    print(f"\nbundle and run left in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
