"""Does evaluating in bf16 change what mini-TOFU concludes? The same learned models and unlearning runs
evaluated twice, with fp32 and with bf16 weights, side by side: every figure, the largest differences,
each method's best checkpoint, the NPO paper's claims, and the evaluation time of each checkpoint.

    python benchmarks/eval_precision.py              # the mini-lr5e-5 plan, GA and NPO+RT (CPU: ~1.5 h cold)
    python benchmarks/eval_precision.py --methods npo_rt   # NPO+RT alone (~45 min once the models are learned)
    python benchmarks/eval_precision.py --quick      # pipeline check on tofu_mini's quick plan

It shares tofu_mini's cache (runs/tofu_mini): the learned target and retain models and the unlearning
runs are reused or resumed; fp32 evaluations land in eval/, bf16 ones in eval-bfloat16/. Training is fp32
in both, so the only difference is the evaluation's weights dtype. Writes docs/results/eval_precision.{json,md}
(--quick: into the cache).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.ledger import Ledger  # noqa: E402
from benchmarks.tofu_claims import best_points, expectations  # noqa: E402
from benchmarks.tofu_plans import LABELS, mini_plans, quick_plan  # noqa: E402
from benchmarks.tofu_stages import Bench, run_plan  # noqa: E402

DTYPES = ("float32", "bfloat16")
FIGURES = ("fq", "mu", "forget_rouge", "forget_prob", "forget_truth_ratio", "retain_rouge", "retain_prob",
           "retain_truth_ratio", "forget_fluency", "retain_fluency", "mia_auc")
# The tolerance auto's bf16 choice is held to: conclusions identical (best epoch per method, every claim's
# yes/no), and no figure on the 0..1 scales further apart than this.
TOLERANCE = 0.05


def evaluated_models(result: dict) -> dict[str, dict]:
    """Every evaluated model of one result, by a name shared across dtypes."""
    models = {"target": result["target"], "retain": result["retain"]}
    for method, points in result["curves"].items():
        models.update({f"{LABELS[method]} epoch {p['epoch']}": p for p in points[1:]})
    return models


def compare(results: dict[str, dict]) -> dict:
    fp32, bf16 = (evaluated_models(results[d]) for d in DTYPES)
    rows, largest = [], {}
    for name in fp32:
        for figure in FIGURES:
            a, b = fp32[name].get(figure), bf16[name].get(figure)
            if a is None or b is None:
                continue
            rows.append({"model": name, "figure": figure, "float32": a, "bfloat16": b, "difference": b - a})
            if abs(b - a) > abs(largest.get(figure, {}).get("difference", 0)) or figure not in largest:
                largest[figure] = rows[-1]
    seconds = {d: sum(m["eval_seconds"] for m in evaluated_models(results[d]).values()) for d in DTYPES}
    best = {d: {m: b["evaluation"]["epoch"] for m, b in best_points(results[d]).items()} for d in DTYPES}
    claims = {d: expectations(results[d]) for d in DTYPES}
    verdicts = {d: [line.split("**")[1] if "**" in line else line for line in claims[d]] for d in DTYPES}
    on_scale = [r for r in largest.values() if r["figure"] != "fq"]
    same = (best["float32"] == best["bfloat16"] and verdicts["float32"] == verdicts["bfloat16"]
            and all(abs(r["difference"]) <= TOLERANCE for r in on_scale))
    return {"rows": rows, "largest": largest, "eval_seconds": seconds,
            "speedup": seconds["float32"] / seconds["bfloat16"], "best_epoch": best, "claims": claims,
            "conclusions_unchanged": same, "tolerance": TOLERANCE}


def markdown(comparison: dict, plan_name: str, device: str) -> str:
    from core.evaluation.report import table

    c = comparison
    lines = [f"# Evaluation in bf16 against fp32: mini-TOFU `{plan_name}`", "",
             f"Device: {device}. Command: `python benchmarks/eval_precision.py`. Training in fp32; only the "
             "evaluation's weights differ.", "",
             f"**Evaluation time** (every checkpoint, the tofu suite proper, model loading excluded): fp32 "
             f"{c['eval_seconds']['float32']:.0f} s, bf16 {c['eval_seconds']['bfloat16']:.0f} s: "
             f"**{c['speedup']:.2f}x**.", "",
             f"**Conclusions unchanged: {'yes' if c['conclusions_unchanged'] else 'NO'}** (rule: the same best "
             f"epoch per method, the same verdict on every claim, and no figure other than Forget Quality, a "
             f"p-value, further apart than {c['tolerance']}).", "",
             "## Best checkpoint (epoch) per method", "",
             table(["method", "fp32", "bf16"], [[m, c["best_epoch"]["float32"][m], c["best_epoch"]["bfloat16"].get(m)]
                                               for m in c["best_epoch"]["float32"]]), "",
             "## The claims, as each dtype measures them", ""]
    for dtype in DTYPES:
        lines += [f"{dtype}:", "", *c["claims"][dtype], ""]
    lines += ["## Largest difference per figure", "",
              table(["figure", "model", "fp32", "bf16", "bf16 - fp32"],
                    [[f, r["model"], r["float32"], r["bfloat16"], r["difference"]] for f, r in c["largest"].items()]),
              "", "## Every figure", "",
              table(["model", "figure", "fp32", "bf16", "bf16 - fp32"],
                    [[r["model"], r["figure"], r["float32"], r["bfloat16"], r["difference"]] for r in c["rows"]]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="pipeline check: tofu_mini's quick plan")
    parser.add_argument("--runs-dir", default=None, help="tofu_mini's cache (default runs/tofu_mini)")
    parser.add_argument("--methods", default="ga,npo_rt", help="comma-separated (default ga,npo_rt)")
    args = parser.parse_args(argv)

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    plan = replace(quick_plan() if args.quick else mini_plans()[1], methods=methods)
    root = Path(args.runs_dir or REPO / "runs" / ("tofu_mini_quick" if args.quick else "tofu_mini")).resolve()
    out = root / "results" if args.quick else REPO / "docs" / "results"
    out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out / "records" / "eval_precision")
    ledger.hold()   # as tofu_mini: a second invocation at once would overwrite this one's figures
    bench = Bench(root, "cpu", ledger)
    results = {dtype: run_plan(replace(plan, eval_dtype=dtype), bench) for dtype in DTYPES}
    comparison = compare(results)
    (out / "eval_precision.json").write_text(json.dumps({"plan": plan.name, **comparison}, indent=2))
    (out / "eval_precision.md").write_text(markdown(comparison, plan.name, "cpu"))
    print((out / "eval_precision.md").read_text().split("## Largest")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
