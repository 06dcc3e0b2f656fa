"""What each method built to survive relearning costs per step, against NPO+RT, side by side in one run.
Writes docs/results/step_cost.{md,json}.

    python benchmarks/step_cost.py                          # the robust methods, LoRA and full, on the demo model
    python benchmarks/step_cost.py --methods npo_rt,npo_sam --modes lora --steps 6 --model tiny-folder

Every method trains `--steps` steps (batch 4, the demo's forget and retain QA, its defaults otherwise) in the
same process, one after another, in rounds (`--rounds`): round 1 runs every method once, round 2 again, so
that drift in the machine's speed falls on every method alike. A method's seconds per step is the median of
its steps 2..N over all rounds (the first step pays for warm-up). Its ratio is that over NPO+RT's in the same
mode. Meant for an idle machine: another job beside it changes the seconds more than the ratios.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEMO = REPO / "assets" / "demo"
REFERENCE = "npo_rt"
# name -> (method, more UnlearnConfig settings): the quant-aware switch is timed on NPO+RT, where the robust
# benchmark uses it
VARIANTS = {"npo_rt": ("npo_rt", {}), "npo_rt+quant_aware": ("npo_rt", {"quant_aware": 1.0}),
            "npo_rt+quant_aware_q4_k_m": ("npo_rt", {"quant_aware": 1.0, "quant_aware_format": "q4_k_m"}),
            "npo_rt+quant_aware_both": ("npo_rt", {"quant_aware": 1.0, "quant_aware_format": "q4_0,q4_k_m"}),
            "npo_sam": ("npo_sam", {}), "npo_rs": ("npo_rs", {}), "npo_wa": ("npo_wa", {}),
            "mudman": ("mudman", {}), "undo": ("undo", {})}
MODES = {"lora": {"lora": True}, "full": {"lora": False}}


def step_durations(**settings) -> list[float]:
    """Seconds of steps 2..N of one short run on the demo's forget and retain QA (`settings`: the rest of its
    UnlearnConfig, max_steps included), in a scratch folder."""
    from core.config import UnlearnConfig
    from core.runs import RunDir
    from core.trainer import train

    with tempfile.TemporaryDirectory(prefix="step-cost-") as tmp:
        train(UnlearnConfig(forget=str(DEMO / "forget.jsonl"), retain=str(DEMO / "retain.jsonl"),
                            out=str(Path(tmp) / "run"), logging_steps=1, save_steps=0, eval_examples=0, **settings),
              show_progress=False, log=lambda message: None)
        clock = [row["wall_time"] for row in RunDir(Path(tmp) / "run").metrics() if "wall_time" in row]
    return [b - a for a, b in zip(clock, clock[1:])]


def step_times(model: str, variant: str, mode: str, steps: int) -> list[float] | str:
    """Seconds of steps 2..N of one short run, or why the method refused the mode."""
    from core.errors import UnlearnError

    method, settings = VARIANTS[variant]
    try:
        return step_durations(model=model, method=method, max_steps=steps, batch_size=4, device="cpu",
                              **MODES[mode], **settings)
    except UnlearnError as refused:
        return str(refused).splitlines()[0]


def measure(model: str, variants: list[str], modes: list[str], steps: int, rounds: int, log=print) -> dict:
    """{mode: {variant: {"seconds": median s/step, "steps": n, "ratio": over NPO+RT} or {"refused": why}}}."""
    seconds = {mode: {variant: [] for variant in variants} for mode in modes}
    refused = {}
    for number in range(1, rounds + 1):
        for mode in modes:
            for variant in variants:
                if (mode, variant) in refused:
                    continue
                found = step_times(model, variant, mode, steps)
                if isinstance(found, str):
                    refused[mode, variant] = found
                else:
                    seconds[mode][variant] += found
                log(f"[round {number}] {mode} {variant}: "
                    f"{found if isinstance(found, str) else f'{statistics.median(found):.2f} s/step'}")
    result = {}
    for mode in modes:
        medians = {v: statistics.median(s) for v, s in seconds[mode].items() if s}
        reference = medians.get(REFERENCE)
        result[mode] = {v: ({"refused": refused[mode, v]} if (mode, v) in refused else
                            {"seconds": round(medians[v], 3), "steps": len(seconds[mode][v]),
                             "ratio": round(medians[v] / reference, 2) if reference else None})
                        for v in variants}
    return result


def markdown(record: dict) -> str:
    modes = list(record["modes"])
    lines = [f"# Seconds per step of the methods built to survive relearning, against {REFERENCE}", "",
             f"{record['date']}, `{record['command']}` on {record['machine']}: {record['model']} model, batch 4, "
             f"the demo's forget and retain QA, {record['steps']} steps per run in {record['rounds']} rounds "
             "(every method once per round); seconds per step: the median of steps 2..N over the rounds; ratio: "
             f"over {REFERENCE}'s in the same mode and run.", "",
             "| method | " + " | ".join(f"{m} s/step | {m} x {REFERENCE}" for m in modes) + " |",
             "|---|" + "---|---|" * len(modes)]
    for variant in record["variants"]:
        cells = []
        for mode in modes:
            found = record["modes"][mode][variant]
            cells += ["refused", "-"] if "refused" in found else [f"{found['seconds']:.2f}", f"{found['ratio']:.2f}x"]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    refusals = sorted({f["refused"] for m in record["modes"].values() for f in m.values() if "refused" in f})
    lines += [""] + [f"Refused: {why}" for why in refusals]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--methods", default=",".join(VARIANTS), help=f"some of {', '.join(VARIANTS)}")
    parser.add_argument("--modes", default="lora,full")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "docs" / "results" / "step_cost"),
                        help="writes OUT.md and OUT.json")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.methods.split(",") if v.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [v for v in variants if v not in VARIANTS] + [m for m in modes if m not in MODES]
    if unknown or args.steps < 3 or args.rounds < 1:
        parser.error(f"unknown {', '.join(unknown)}" if unknown else "--steps must be 3 or more, --rounds 1 or more")
    if REFERENCE not in variants:
        variants.insert(0, REFERENCE)
    record = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {_cores()} cores",
              "command": " ".join(["python benchmarks/step_cost.py", *(argv if argv is not None else sys.argv[1:])]),
              "model": args.model, "steps": args.steps, "rounds": args.rounds, "variants": variants,
              "modes": measure(args.model, variants, modes, args.steps, args.rounds)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(record))
    print(markdown(record))
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
