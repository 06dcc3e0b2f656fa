"""The audit (relearn, benign fine-tuning, 4-bit export, rephrasing) of every method's mini-TOFU run on one
target: which unlearning survives?

    python benchmarks/audit_methods.py                       # the forget-50 % protocol's 10 % runs
    python benchmarks/audit_methods.py --methods npo_rt,sure --max-samples 20
    python benchmarks/audit_methods.py --redo rephrase      # one attack made again in every cached audit
    python benchmarks/audit_methods.py --control runs/tofu_forget50/retain18/model --seeds 3 --splits example,group
                                                            # issue 31: control, lr sweep, both splits, 3 seeds

Reads the runs `benchmarks/tofu_mini.py --forget50` trains (plan forget50-10pct: one target that learned
20 TOFU authors, each method unlearning authors 198-199 with the same budget) and audits each finished one
with `unlearn audit`'s defaults into RUN/audit (cached: a finished audit is reused, so a rerun picks up the
runs that have finished since). A run not trained yet is listed as such. Writes
docs/results/audit_methods.{md,json,png}: the NLL recovery per attack and method beside the retain NLL
change, and the verdicts.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.tofu_plans import FORGET50_METHODS, LABELS  # noqa: E402
from benchmarks.tofu_report import require_plotting  # noqa: E402

RUNS = REPO / "runs" / "tofu_forget50" / "forget50-10pct"


def audited(run: Path, max_samples: int, redo: list[str], trust: dict | None = None, split: str = "example") -> dict | None:
    """The run's audit report (made if missing; its `redo` attacks made again), or None when the run has not
    finished training. `trust`: {"control": MODEL, "seeds": N} for the issue-31 audit (with the default
    learning-rate sweep); `split`: the relearn split, whose audit lives in RUN/audit (example) or
    RUN/audit-group. A stopped audit resumes from its OUT/.partial on the next call."""
    from audit import rejudged, run_audit
    from core.runs import RunDir, RunState

    out = RunDir(run).audit_dir if split == "example" else RunDir(run).path / f"audit-{split}"
    settings = dict(max_samples=max_samples, log=lambda message: print(f"    {message}"),
                    options={"relearn_split": split}, **(trust or {}))
    report = out / "audit.json"
    if report.is_file() and redo:
        return run_audit(run, out, redo, update=True, **settings)
    if report.is_file():   # judged again: the recovery rules may have changed since it was measured
        return rejudged(json.loads(report.read_text()))
    if not RunDir(run).holds_run() or RunDir(run).status().get("state") != RunState.FINISHED:
        return None
    return run_audit(run, out, **settings)


FIGURE_NAMES = {"nll": "NLL", "prob": "prob.", "rougeL": "ROUGE-L"}


def _cell(result: dict) -> str:
    """'NLL recovery (the figure that decided the verdict, when another) verdict; retain NLL change'."""
    values = result["recovery"]
    nll = values.get("nll")
    defined = {f: v for f, v in values.items() if v is not None}
    worst = max(defined, key=defined.get) if defined else None
    decided = f" ({FIGURE_NAMES[worst]} {defined[worst]:.2f})" if worst not in (None, "nll") else ""
    retain = (result.get("retain_change") or {}).get("nll")
    return (("-" if nll is None else f"{nll:.2f}") + decided + f" **{result['verdict'].split(':')[0]}**"
            + ("" if retain is None else f"; retain {retain:+.2f}"))


def markdown(reports: dict[str, dict | None], runs: Path, max_samples: int) -> str:
    from core.evaluation.report import table

    attacks = list(dict.fromkeys(r["name"] for report in reports.values() if report for r in report["results"]))
    rows = []
    for method, report in reports.items():
        if report is None:
            rows.append([LABELS.get(method, method), "not trained yet"] + [""] * len(attacks))
            continue
        by_name = {r["name"]: r for r in report["results"]}
        cells = []
        for name in attacks:
            result = by_name.get(name)
            if result is None:
                cells.append("-")
                continue
            cells.append(_cell(result))
        rows.append([LABELS.get(method, method), report["overall"]] + cells)
    return "\n".join([
        "# Which unlearning survives? The audit of every method on one mini-TOFU target", "",
        f"{time.strftime('%Y-%m-%d')}, `python benchmarks/audit_methods.py --max-samples {max_samples}` on this "
        f"project's 2-core CPU. Runs: `{runs.relative_to(REPO) if runs.is_relative_to(REPO) else runs}` "
        "(`benchmarks/tofu_mini.py --forget50`, plan forget50-10pct: the 20-author target, TOFU authors "
        "198-199 unlearned at lr 5e-5 for five epochs, each method's final model). Each cell: the forget-answer "
        "**NLL recovery** (0: still forgotten, 1: back to the original; `docs/audit.md`), in brackets the figure "
        "that decided the verdict when it is another (the largest recovery of NLL, probability and ROUGE-L), "
        "the verdict, and the retain NLL change the same attack caused (a recovery that comes with as much retain damage is noise, "
        "not knowledge coming back). Attacks at their defaults; "
        f"{max_samples} forget and {max_samples} retain examples.", "",
        table(["method", "overall"] + attacks, rows), "",
        "![NLL recovery per attack and method](audit_methods.png)", ""])


FLOOR = -1.0   # the plot's lower edge; bars below it are clipped and labelled


def plot(reports: dict[str, dict | None], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = {m: r for m, r in reports.items() if r}
    if not done:
        return
    attacks = list(dict.fromkeys(r["name"] for report in done.values() for r in report["results"]))
    width = 0.8 / len(done)
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(attacks)) + 2, 4))
    for index, (method, report) in enumerate(done.items()):
        by_name = {r["name"]: r["recovery"].get("nll") for r in report["results"]}
        values = [by_name.get(name) or 0.0 for name in attacks]
        label = LABELS.get(method, method) + ("" if any(by_name.values()) else " (nothing to recover)")
        xs = [a + index * width for a in range(len(attacks))]
        ax.bar(xs, [max(v, FLOOR) for v in values], width, label=label)
        for x, value in zip(xs, values):
            if value < FLOOR:   # clipped: a large negative recovery (it forgot more) would squash the rest
                ax.text(x, FLOOR, f"{value:.1f}", rotation=90, ha="center", va="bottom", fontsize=7)
    for line, style in ((0.25, ":"), (0.5, "--")):
        ax.axhline(line, color="grey", linestyle=style, linewidth=1)
    ax.set_xticks([a + 0.4 - width / 2 for a in range(len(attacks))], attacks, rotation=20, ha="right")
    ax.set_ylim(FLOOR, 1.1)
    ax.set_ylabel("forget NLL recovery")
    ax.set_title("Audit per method (0.25: robust below, 0.5: shallow above)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    from core.runs import write_json_atomic, write_text_atomic

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=str(RUNS), help="the plan folder holding unlearn-METHOD runs")
    parser.add_argument("--methods", default=",".join(FORGET50_METHODS))
    parser.add_argument("--max-samples", type=int, default=20)
    parser.add_argument("--redo", default="", help="attacks to redo in the cached audits (`unlearn audit --update`)")
    parser.add_argument("--results", default=str(REPO / "docs" / "results"))
    parser.add_argument("--control", default="", help="a never-learned model (e.g. the 18-author retain model's "
                                                      "folder): every fine-tuning attack trains it alike")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--splits", default="example", help="relearn splits to audit, comma-separated: example,group")
    args = parser.parse_args(argv)
    require_plotting()
    runs, results = Path(args.runs).resolve(), Path(args.results)
    reports = {}
    trust = {"control": args.control or None, "seeds": args.seeds}
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        for split in splits:
            print(f"[{time.strftime('%H:%M:%S')}] {method} ({split} split)", flush=True)
            key = method if split == "example" else f"{method} ({split} split)"
            reports[key] = audited(runs / f"unlearn-{method}", args.max_samples,
                                   [a.strip() for a in args.redo.split(",") if a.strip()], trust, split)
    write_json_atomic(results / "audit_methods.json", reports)
    write_text_atomic(results / "audit_methods.md", markdown(reports, runs, args.max_samples))
    plot(reports, results / "audit_methods.png")
    print((results / "audit_methods.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
