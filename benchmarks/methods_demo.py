"""Every unlearning method on the demo model with the same budget, and what 4-bit export does to it.
Writes docs/results/methods.{md,json}; each method's result is cached under --runs-dir, so an interrupted
run continues where it stopped.

    python benchmarks/methods_demo.py [--runs-dir runs/methods_demo] [--methods npo_rt,sure]

Budget (the studio's demo budget until 2026-12-01): LoRA, 60 steps, batch 4, lr 3e-4, each method's published defaults
otherwise, on the demo's forget (TOFU authors 198-199) and retain (authors 0-1) QA. Per method: forget /
retain answer NLL before -> after (the trainer's summary), forget / retain ROUGE-L recall and fluency of 10
greedy answers (the quick suite), seconds per step, and, through `unlearn export`'s parity check, how much
of the forget-NLL gain GGUF q4_0 and q4_k_m undo (nll_recovery: 0 keeps the forgetting, 1 undoes it).

Seconds per step come from a separate short run per method (`--time-steps`, default 6 steps; the median
of steps 2..N), meant for an idle machine: the long runs share the CPU with whatever else runs. Without
it the table shows each run's wall time over its steps (loading and scoring included).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEMO = REPO / "assets" / "demo"
BUDGET = {"lora": True, "max_steps": 60, "batch_size": 4, "lr": 3e-4}
QUANTS = ("q4_0", "q4_k_m")


def one_method(name: str, root: Path) -> dict:
    from core.config import UnlearnConfig
    from core.data import load_examples
    from core.evaluation.scores import Settings
    from core.evaluation.suites.quick import run_quick
    from core.models import open_model
    from core.runs import write_json_atomic
    from core.trainer import train
    from export.bundle import export_run

    cached = root / name / "result.json"
    if cached.is_file():
        record = json.loads(cached.read_text())
        parity = root / name / "bundle" / "parity.json"
        if parity.is_file():   # results cached before core.recovery's definition was shared
            record["gguf_recovery"] = gguf_recovery(json.loads(parity.read_text()))
        return record

    run = root / name / "run"
    result = train(UnlearnConfig(model="demo", method=name, forget=str(DEMO / "forget.jsonl"),
                                 retain=str(DEMO / "retain.jsonl"), out=str(run), overwrite=True, **BUDGET),
                   show_progress=False, log=lambda m: None)
    loaded = open_model(str(run), "cpu")
    original = open_model(loaded.original, "cpu")
    quick = run_quick(loaded, root / name / "quick", load_examples(str(DEMO / "forget.jsonl"), "forget"),
                      load_examples(str(DEMO / "retain.jsonl"), "retain"),
                      Settings(max_samples=10, max_new_tokens=48), (original.model, original.tokenizer), "demo")
    del loaded, original
    export_run(run, root / name / "bundle", formats=("gguf",), gguf_quants=QUANTS, parity_examples=8,
               overwrite=True, log=lambda m: None)
    parity = json.loads((root / name / "bundle" / "parity.json").read_text())
    summary = result.summary
    record = {"method": name, "nll_before": summary["before"], "nll_after": summary["after"],
              "seconds_per_step": round(summary["wall_seconds"] / max(summary["steps"], 1), 2),
              "steps": summary["steps"], "stopped_early": summary.get("stopped_early"),
              "quick": {stage: quick[stage] for stage in ("before", "after")},
              "gguf_recovery": gguf_recovery(parity)}
    write_json_atomic(cached, record)
    return record


def gguf_recovery(parity: dict) -> dict:
    """Forget-NLL recovery per 4-bit format from the bundle's parity report, by core.recovery's definition
    (undefined where the run gained less than 0.05 nats to recover)."""
    from core.recovery import recovery

    original, unlearned = parity["original"]["forget_nll"], parity["pytorch"]["forget_nll"]
    return {q: recovery(original, unlearned, parity["forgetting"][f"gguf-{q}"]["forget_nll"], "nll")
            if f"gguf-{q}" in parity["forgetting"] else None for q in QUANTS}


def step_seconds(name: str, root: Path, steps: int) -> float:
    """Median seconds per optimizer step of `steps` steps of the method (steps 2..N), cached per method."""
    from benchmarks.step_cost import step_durations
    from core.runs import write_json_atomic

    cached = root / name / f"step_seconds-{steps}.json"
    if cached.is_file():
        return json.loads(cached.read_text())["median"]
    median = statistics.median(step_durations(model="demo", method=name, **{**BUDGET, "max_steps": steps}))
    cached.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cached, {"median": round(median, 2), "steps": steps, "date": time.strftime("%Y-%m-%d")})
    return round(median, 2)


# The outcome column's rules (stated in the report).
WRECKED_RETAIN_NLL = 1.0     # nats per retain-answer token after unlearning (before: ~0.01)
FORGOT = 0.5                 # forget ROUGE-L at most this share of its value before
KEPT = 0.8                   # retain ROUGE-L at least this share of its value before


def outcome(record: dict) -> str:
    quick = record["quick"]
    if record["nll_after"]["retain_nll"] > WRECKED_RETAIN_NLL:
        return "**wrecked**"
    share = {s: quick["after"][s]["rougeL_recall"] / max(quick["before"][s]["rougeL_recall"], 1e-9)
             for s in ("forget", "retain")}
    if share["forget"] > FORGOT:
        return "forgot little"
    return "forgot, kept retain" if share["retain"] >= KEPT else "forgot, lost some retain"


def markdown(records: list[dict], pending: list[str]) -> str:
    from core.evaluation.report import table

    header = ["method", "outcome", "forget NLL", "retain NLL", "forget ROUGE-L", "retain ROUGE-L", "forget fluency",
              "s / step", "q4_0 recovery", "q4_k_m recovery"]
    rows = []
    for r in records:
        q = r["quick"]
        rows.append([r["method"], outcome(r),
                     f"{r['nll_before']['forget_nll']:.2f} -> {r['nll_after']['forget_nll']:.2f}",
                     f"{r['nll_before']['retain_nll']:.2f} -> {r['nll_after']['retain_nll']:.2f}",
                     f"{q['before']['forget']['rougeL_recall']:.2f} -> {q['after']['forget']['rougeL_recall']:.2f}",
                     f"{q['before']['retain']['rougeL_recall']:.2f} -> {q['after']['retain']['rougeL_recall']:.2f}",
                     f"{q['after']['forget']['fluency']:.2f}",
                     f"{r['seconds_per_step']}" + ("" if r.get("timed_apart") else " (long run)"),
                     *("-" if r["gguf_recovery"][quant] is None else f"{r['gguf_recovery'][quant]:.2f}"
                       for quant in QUANTS)])
    return "\n".join([
        "# Every method on the demo model, same budget", "",
        f"{time.strftime('%Y-%m-%d')}, `python benchmarks/methods_demo.py` on this project's 2-core CPU (bf16 "
        f"where the CPU has it). Budget: {json.dumps(BUDGET)}, each method's defaults otherwise; data: the demo's "
        "forget (TOFU authors 198-199) and retain (authors 0-1) QA. s / step: the median of a separate short run "
        "per method (steps 2-N; run with the machine otherwise idle), else the long run's wall time per step; "
        "NLL: the trainer's before/after scores; "
        "ROUGE-L recall and fluency: 10 greedy answers per set (quick suite); recovery: the share of the "
        "forget-NLL gain the GGUF format undoes in llama.cpp (export parity check; 0 keeps it, 1 undoes it). "
        f"Outcome: **wrecked** when the retain NLL ends above {WRECKED_RETAIN_NLL:g} nats per token; otherwise "
        f"'forgot' when the forget ROUGE-L fell to at most {FORGOT:g}x its value before, and 'kept retain' when "
        f"the retain ROUGE-L stayed at least {KEPT:g}x its value before.",
        "", table(header, rows), "",
        *([f"Not run yet: {', '.join(pending)} (`python benchmarks/methods_demo.py` continues where it stopped).", ""]
          if pending else [])])


def main(argv=None) -> int:
    from core.methods import unlearning_methods
    from core.runs import write_json_atomic, write_text_atomic

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-dir", default=str(REPO / "runs" / "methods_demo"))
    parser.add_argument("--methods", default=",".join(unlearning_methods()))
    parser.add_argument("--time-steps", type=int, default=6,
                        help="steps of the separate timing run per method (0: no timing run)")
    parser.add_argument("--done-only", action="store_true",
                        help="only the methods already run (the table lists the rest as not run yet); with "
                             "--time-steps 0 it just writes the table")
    args = parser.parse_args(argv)
    root = Path(args.runs_dir)
    started = time.time()
    records, pending = [], []
    for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        if args.done_only and not (root / name / "result.json").is_file():
            pending.append(name)
            continue
        print(f"[{(time.time() - started) / 60:.1f} min] {name}", flush=True)
        records.append(one_method(name, root))
    for record in records if args.time_steps else ():   # after the long runs: time them on an idle machine
        print(f"[{(time.time() - started) / 60:.1f} min] timing {record['method']}", flush=True)
        record["seconds_per_step"] = step_seconds(record["method"], root, args.time_steps)
        record["timed_apart"] = True
    out = REPO / "docs" / "results"
    write_json_atomic(out / "methods.json", {"methods": records, "not_run_yet": pending})
    write_text_atomic(out / "methods.md", markdown(records, pending))
    print((out / "methods.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
