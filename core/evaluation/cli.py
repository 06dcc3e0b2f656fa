"""`unlearn eval`, `unlearn suites`, `unlearn tofu-aggregate` and `unlearn best-checkpoint`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..paths import input_arg, output_folder_arg
from ..tracking import log_figures


def add_commands(commands) -> None:
    """Add evaluation's subcommands (called by core.cli.add_commands)."""
    _add_eval(commands)
    _add_aggregate(commands)
    _add_best_checkpoint(commands)


# ---------------------------------------------------------------- eval

def _add_eval(commands) -> None:
    from .suites import SUITES

    p = commands.add_parser(
        "eval", help="measure what a model or run forgot and kept (suites: " + ", ".join(sorted(SUITES)) + ")",
        description="Evaluate a run directory, one of its checkpoints, a model directory, a LoRA adapter or "
                    "'bundled' with one suite (`unlearn suites` lists them and what each needs). Example: "
                    "unlearn eval runs/tofu01 --suite tofu --out runs/tofu01/eval")
    p.add_argument("model", metavar="MODEL_OR_RUN", type=input_arg)
    p.add_argument("--suite", choices=sorted(SUITES), default="tofu",
                   help="; ".join(f"{name}: {suite.summary}" for name, suite in sorted(SUITES.items())))
    p.add_argument("--out", required=True, type=output_folder_arg("--out"),
                   help="directory for the logs, summary.json and summary.md")
    for need in _needs():
        users = [name for name, suite in sorted(SUITES.items()) if any(n.name == need.name for n in suite.needs)]
        text = f"{need.help} ({', '.join(users)}" + ("; default: the run's" if need.from_run else "") + ")"
        p.add_argument(need.flag, dest=f"{NEED_PREFIX}{need.name}", default=None, metavar="PATH", type=input_arg,
                       help=text.replace("%", "%%"))
    for option in _options():
        meanings = [f"{name}: {o.help}; {o.range_text()}; default {o.default!r}" for name, suite in sorted(SUITES.items())
                    for o in suite.options if o.name == option.name]
        p.add_argument(option.flag, dest=f"{OPTION_PREFIX}{option.name}", default=None, metavar="VALUE",
                       help=" | ".join(meanings).replace("%", "%%"))   # argparse formats help with %
    p.add_argument("--original", default=None, type=input_arg,
                   help="the model before unlearning, for fluency and 'before' scores (default: a run's base model)")
    p.add_argument("--max-samples", type=int, default=None, help="first N samples per set (default: the suite's)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation length (default: the suite's)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    add_dtype_flag(p)
    p.add_argument("--trust-remote-code", action="store_true")
    for role in ("forget", "retain"):
        p.add_argument(f"--{role}-columns", default=None, metavar="MAP",
                       help=f"the {role} set's columns when they are not question/answer (question=COL,answer=COL "
                            f"or text=COL); default: the ones the run was trained with, for the run's own {role} set")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--quiet", action="store_true", help="no progress bars, no table (the results are in --out)")
    shown.add_argument("--json", action="store_true", help="print summary.json and nothing else")
    p.set_defaults(handler=run_eval)

    suites = commands.add_parser("suites", help="list the evaluation suites, the data each needs and its options")
    suites.set_defaults(handler=run_suites)


NEED_PREFIX, OPTION_PREFIX = "need__", "option__"


def _needs() -> list:
    from .suites import SUITES

    return list({n.name: n for suite in SUITES.values() for n in suite.needs}.values())


def _options() -> list:
    from .suites import SUITES

    return list({o.name: o for suite in SUITES.values() for o in suite.options}.values())


def run_suites(args) -> int:
    from .suites import SUITES

    for name, suite in sorted(SUITES.items()):
        print(f"{name:<7} {suite.summary}")
        for need in suite.needs:
            kind = "needs" if need.required else "reads"
            print(f"{'':<7} {kind} {need.flag} PATH: {need.help}" + (" (a run's own by default)" if need.from_run else ""))
        for option in suite.options:
            print(f"{'':<7} option {option.flag} {option.default}  ({option.range_text()}) {option.help}")
    return 0


def add_dtype_flag(parser) -> None:
    from ..models import DTYPES

    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="weights for scoring and generating; auto: bf16 on a GPU or CPU with fast bf16 "
                             "(AVX512-BF16/AMX), fp32 elsewhere; the dtype used is written into every result")


def run_eval(args) -> int:
    from .evaluator import evaluate
    from .suites import get_suite

    suite = get_suite(args.suite)
    data = {k.removeprefix(NEED_PREFIX): v for k, v in vars(args).items() if k.startswith(NEED_PREFIX)}
    options = {k.removeprefix(OPTION_PREFIX): v for k, v in vars(args).items()   # other suites' flags are left unset
               if k.startswith(OPTION_PREFIX) and k.removeprefix(OPTION_PREFIX) in {o.name for o in suite.options}}
    if args.quiet or args.json:
        from ..progress import silence_bars

        silence_bars()
    columns = {role: getattr(args, f"{role}_columns") for role in ("forget", "retain")}
    summary = evaluate(args.model, args.suite, args.out, data, options, args.original, args.max_samples,
                       args.max_new_tokens, args.batch_size, args.device, args.dtype, args.trust_remote_code,
                       columns=columns)
    log_figures(args.model, f"eval/{args.suite}", summary)   # to the run's --report-to trackers, if any
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(suite.table(summary))
        print(f"\nlogs and summary.json in {args.out} ({summary['wall_seconds']} s)")
    return 0


# ---------------------------------------------------------------- tofu-aggregate

def _add_aggregate(commands) -> None:
    p = commands.add_parser(
        "tofu-aggregate", help="TOFU's Model Utility and Forget Quality from two aggregated eval logs",
        description="Read a model's and a retain model's aggregated TOFU eval logs (eval_log_aggregated.json, "
                    "or an `unlearn eval` output directory) and print the twelve figures, Model Utility and "
                    "Forget Quality as JSON, as TOFU's aggregate_eval_stat.py computes them.")
    p.add_argument("target", metavar="TARGET", type=input_arg, help="the evaluated model's aggregated eval log")
    p.add_argument("retain", metavar="RETAIN", type=input_arg, help="the retain model's aggregated eval log")
    p.set_defaults(handler=run_aggregate)


def run_aggregate(args) -> int:
    from .suites.tofu import read_eval_output
    from .tofu_metrics import tofu_aggregate

    result = tofu_aggregate(read_eval_output(args.target)["logs"], read_eval_output(args.retain)["logs"])
    print(json.dumps(result, indent=2))
    return 0


# ---------------------------------------------------------------- best-checkpoint

def _add_best_checkpoint(commands) -> None:
    p = commands.add_parser(
        "best-checkpoint", help="pick the checkpoint with the best forget/utility trade-off from tofu evaluations",
        description="Given the tofu-suite evaluation of the original model and of several checkpoints (each "
                    "evaluated with --retain-logs), print the one with the highest Forget Quality among those "
                    "keeping at least --utility-floor of the original's Model Utility. Example: unlearn "
                    "best-checkpoint --original eval/target eval/step-10 eval/step-20 eval/final")
    p.add_argument("evals", nargs="+", metavar="EVAL_DIR", type=input_arg, help="`unlearn eval --suite tofu` output directories")
    p.add_argument("--original", required=True, type=input_arg, help="the original model's eval directory (its Model Utility)")
    p.add_argument("--utility-floor", type=float, default=0.9, help="share of the original's utility to keep")
    p.set_defaults(handler=run_best_checkpoint)


def run_best_checkpoint(args) -> int:
    from .report import SUMMARY, read_json_file
    from .selection import select_best

    def figures(directory):
        return read_json_file(Path(directory) / SUMMARY, "eval summary")["figures"]

    evaluations = [{"eval": d, **figures(d)} for d in args.evals]
    pick = select_best(evaluations, figures(args.original)["Model Utility"], args.utility_floor)
    chosen = pick["evaluation"]
    print(json.dumps({"best": chosen["eval"], "meets_floor": pick["meets_floor"], "rule": pick["rule"],
                      "Forget Quality": chosen["Forget Quality"], "Model Utility": chosen["Model Utility"]}, indent=2))
    return 0
