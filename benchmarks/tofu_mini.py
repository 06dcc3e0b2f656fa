"""Mini-TOFU: TOFU's protocol scaled to the bundled SmolLM2-135M, and the NPO paper's central result
(NPO forgets without collapsing, gradient ascent collapses) measured with this project's own numbers.

Run from the repository root:

    python benchmarks/tofu_mini.py --quick            # smoke run: 4 authors, 1 epoch, tiny evals (minutes)
    python benchmarks/tofu_mini.py                    # the mini protocol (CPU: hours on 2 busy cores)
    python benchmarks/tofu_mini.py --device cuda      # the same on a GPU
    python benchmarks/tofu_mini.py --device cuda --full   # TOFU's own forget01/05/10 protocol on a GPU
    python benchmarks/tofu_mini.py --device cuda --full --splits forget01   # one split at a time

Protocol (mini):
1. Learn a *target* model: supervised fine-tuning (`method="sft"`, full fine-tuning) of the bundled model on
   TOFU authors 0-9 plus the forget01 authors 198-199 (240 QA). Learn a *retain* model the same way on
   authors 0-9 only. Authors 196-197 are never trained on: the held-out set for membership inference.
   (retain_perturbed = the QA of authors 0-19, of which the eval uses the first 60, authors 0-2, and
   forget01_perturbed = authors 198-199, so TOFU's paraphrased and perturbed answers exist for every
   evaluated sample.)
2. Unlearn authors 198-199 from the target with GA, GradDiff, NPO, NPO+RT and SimNPO: same epochs, learning
   rate, batch size and retain data (authors 0-9) for each; a checkpoint every epoch. Twice, on the same
   learned models: at the NPO paper's learning rate 1e-5 (plan "mini") and at 5e-5 ("mini-lr5e-5", the
   paper's four methods: GA, GradDiff, NPO, NPO+RT), since 1e-5 for 50 steps hardly moves a 135M model.
3. Evaluate every epoch's checkpoint with the tofu suite (`core.evaluation`): Forget Quality against the
   retain model, Model Utility, forget ROUGE, fluency (under the target model), min-k% MIA AUC and PrivLeak
   against the retain model. Pick each method's best checkpoint (`core.evaluation.selection`).
4. Write results/tofu_mini.{json,md,png}: the table, the per-epoch figures, and the NPO paper's figure
   redrawn (Forget Quality and Model Utility against epochs, one line per method).

`--full` (for a GPU): target = all 200 authors (tofu:full), retain models on retain99/95/90, unlearning of
forget01/05/10 against retain99/95/90 (TOFU's pairing), TOFU's eval sizes (300 samples, 200 new tokens),
10 epochs (the NPO paper's budget). No MIA (TOFU keeps no author out of `full`).

Caching and resuming: every learned model, unlearning run and evaluation lives under --runs-dir
(default runs/tofu_mini); a finished one is reused, an interrupted training run resumes from its last
checkpoint, an interrupted evaluation is redone. Once a run's epochs are evaluated, the weights of every
checkpoint but the best epoch's are deleted (the final model stays; `--keep-checkpoints` keeps them all):
a full run of the 135M model then takes 1 GB instead of 2.6. Progress and elapsed time are printed as it
goes; the total wall time is recorded in the results.

The record (results/records/<report>/, benchmarks/ledger.py) outlives the cache: every method's per-epoch
figures, the target's and retain model's, each stage's time and the retain model's evaluation log go there as
they are measured. On a fresh machine the run takes what is recorded and measures only the rest, learning the
target again if a method is left (and saying how the new target compares), never a retain model. `--splits`
and `--methods` pick what to measure now, so a protocol longer than a machine's life is measured a few
methods at a time:

    python benchmarks/tofu_mini.py --forget50 --splits forget01 --methods ga,grad_diff

The protocol's parts, one module each: benchmarks/tofu_plans.py (the plans and their data), tofu_stages.py (the
cached stages and checkpoint pruning), tofu_claims.py (statistics and the paper's claims), tofu_report.py
(markdown, figure, JSON); this file is the command line.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/tofu_mini.py` puts benchmarks/ first, not the repo
    sys.path.insert(0, str(REPO))

from benchmarks.ledger import Ledger  # noqa: E402  (needs the repository on the path)
from benchmarks.tofu_plans import forget50_plans, full_plans, mini_plans, quick_plan  # noqa: E402
from benchmarks.tofu_report import clock, require_plotting, write_report  # noqa: E402
from benchmarks.tofu_stages import Bench, fill_truth_ratios, run_plan  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 authors, GA and NPO+RT, 2 epochs")
    parser.add_argument("--full", action="store_true", help="TOFU's forget01/05/10 protocol (for a GPU)")
    parser.add_argument("--forget50", action="store_true",
                        help="the NPO paper's headline: forget 10 %% and 50 %% of a 20-author target")
    parser.add_argument("--splits", default=None,
                        help="with --full or --forget50: which forget splits to measure now, comma-separated "
                             "(default all; the others' recorded results still go into the report)")
    parser.add_argument("--methods", default=None,
                        help="which methods to measure now, comma-separated (default all; a long protocol can "
                             "be measured a few methods per machine, the record keeps the rest)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--eval-dtype", default="float32", choices=("auto", "float32", "bfloat16"),
                        help="weights for the evaluations (default float32, as the published results)")
    parser.add_argument("--train-dtype", default="float32", choices=("auto", "float32", "bfloat16"),
                        help="learning and unlearning (default float32, as the published results; its runs are "
                             "cached apart only by the run directory: use another --runs-dir for auto)")
    parser.add_argument("--runs-dir", default=None, help="cache of models and evaluations (default runs/tofu_mini)")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep every epoch's weights (by default only the best epoch's and the final model "
                             "are kept once evaluated: 0.5 GB per full fine-tuning checkpoint)")
    parser.add_argument("--results", default=None,
                        help="where tofu_mini.{json,md,png} go (default docs/results, or RUNS/results with --quick)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    from core.models import dtype_name, inference_dtype, pick_device

    device = str(pick_device(args.device))
    # `auto` decided here and recorded as what it chose: the record must not mix machines that chose apart
    eval_dtype, train_dtype = (dtype_name(inference_dtype(requested, pick_device(device)))
                               for requested in (args.eval_dtype, args.train_dtype))
    root = Path(args.runs_dir or REPO / "runs" / ("tofu_mini_quick" if args.quick else "tofu_mini")).resolve()
    results_dir = Path(args.results or (root / "results" if args.quick else REPO / "docs" / "results"))
    results_dir.mkdir(parents=True, exist_ok=True)
    plans = full_plans() if args.full else forget50_plans() if args.forget50 else \
        [quick_plan()] if args.quick else mini_plans()
    plans = [replace(plan, eval_dtype=eval_dtype, train_dtype=train_dtype) for plan in plans]
    splits = _names(args.splits, {p.forget_split for p in plans}, "--splits", parser)
    methods = _names(args.methods, {m for p in plans for m in p.methods}, "--methods", parser)
    stem = "tofu_full" if args.full else "tofu_forget50" if args.forget50 else "tofu_mini"
    require_plotting()
    ledger = Ledger(results_dir / "records" / stem)
    ledger.hold()
    bench = Bench(root, device, ledger, args.keep_checkpoints)
    bench.say(f"mini-TOFU on {device}: plans {', '.join(p.name for p in plans)}; cache {root}; "
              f"record {bench.ledger.path}")
    for plan in plans:
        fill_truth_ratios(bench, plan)
    results = [run_plan(plan, bench, methods) if splits is None or plan.forget_split in splits
               else bench.ledger.result(asdict(plan), plan.methods) for plan in plans]
    results = [r for r in results if r]   # a plan not measured now and never before has no result
    wall = bench.count_wall()
    print(write_report(results, bench.ledger, wall, device, results_dir, stem,
                       one_row_per_size=args.forget50))   # the issue: a panel per size
    bench.say(f"done: results in {results_dir} (wall time {clock(wall)})")
    return 0


def _names(given: str | None, known: set[str], option: str, parser) -> tuple[str, ...] | None:
    """A comma-separated choice among `known` (None: all of them)."""
    if given is None:
        return None
    names = tuple(n.strip() for n in given.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        parser.error(f"{option} {given!r}: {', '.join(unknown) or 'nothing'} is not one of {', '.join(sorted(known))}")
    return names


if __name__ == "__main__":
    sys.exit(main())