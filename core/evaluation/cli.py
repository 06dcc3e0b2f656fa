"""`unlearn eval`, `unlearn tofu-aggregate` and `unlearn finetune` (TOFU's learn stage)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_commands(commands) -> None:
    """Add this part's subparsers to `unlearn` (called by core.cli.build_parser)."""
    _add_eval(commands)
    _add_aggregate(commands)
    _add_best_checkpoint(commands)
    _add_finetune(commands)


# ---------------------------------------------------------------- eval

def _add_eval(commands) -> None:
    from .suites import SUITES

    p = commands.add_parser(
        "eval", help="measure what a model or run forgot and kept (suites: " + ", ".join(sorted(SUITES)) + ")",
        description="Evaluate a run directory, one of its checkpoints, a model directory, a LoRA adapter or "
                    "'bundled' with one suite (`unlearn suites` lists them and what each needs). Example: "
                    "unlearn eval runs/tofu01 --suite tofu --out runs/tofu01/eval")
    p.add_argument("model", metavar="MODEL_OR_RUN")
    p.add_argument("--suite", choices=sorted(SUITES), default="tofu",
                   help="; ".join(f"{name}: {suite.summary}" for name, suite in sorted(SUITES.items())))
    p.add_argument("--out", required=True, help="directory for the logs, summary.json and summary.md")
    for need in _needs():
        users = [name for name, suite in sorted(SUITES.items()) if any(n.name == need.name for n in suite.needs)]
        text = f"{need.help} ({', '.join(users)}" + ("; default: the run's" if need.from_run else "") + ")"
        p.add_argument(need.flag, dest=f"{NEED_PREFIX}{need.name}", default=None, metavar="PATH",
                       help=text.replace("%", "%%"))
    for option in _options():
        meanings = [f"{name}: {o.help}; {o.range_text()}; default {o.default!r}" for name, suite in sorted(SUITES.items())
                    for o in suite.options if o.name == option.name]
        p.add_argument(option.flag, dest=f"{OPTION_PREFIX}{option.name}", default=None, metavar="VALUE",
                       help=" | ".join(meanings).replace("%", "%%"))   # argparse formats help with %
    p.add_argument("--original", default=None,
                   help="the model before unlearning, for fluency and 'before' scores (default: a run's base model)")
    p.add_argument("--max-samples", type=int, default=None, help="first N samples per set (default: the suite's)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation length (default: the suite's)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    add_dtype_flag(p)
    p.add_argument("--trust-remote-code", action="store_true")
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
    from ..errors import require
    from .evaluator import Settings
    from .loading import open_model
    from .suites import EvalContext, get_suite

    suite = get_suite(args.suite)
    settings = Settings(max_samples=_default(args.max_samples, suite.max_samples),
                        max_new_tokens=_default(args.max_new_tokens, suite.max_new_tokens), batch_size=args.batch_size)
    settings.validate()
    given = {k.removeprefix(NEED_PREFIX): v for k, v in vars(args).items() if k.startswith(NEED_PREFIX) and v}
    unused = [n for n in given if n not in {need.name for need in suite.needs}]
    require(not unused, f"the {suite.name} suite does not read --{', --'.join(u.replace('_', '-') for u in unused)}",
            "drop it, or choose the suite that does (`unlearn suites`)")
    options = suite.resolve_options({k.removeprefix(OPTION_PREFIX): v for k, v in vars(args).items()
                                     if k.startswith(OPTION_PREFIX) and v is not None and
                                     k.removeprefix(OPTION_PREFIX) in {o.name for o in suite.options}})
    suite.check_inputs(given)                    # bad data fails before any model is loaded
    loaded = open_model(args.model, args.device, args.trust_remote_code, args.dtype)
    data = {need.name: given.get(need.name) or ((loaded.run_config or {}).get(need.name) if need.from_run else None)
            for need in suite.needs}
    original_name = args.original or loaded.original
    original = None
    if original_name:
        opened = open_model(original_name, args.device, args.trust_remote_code, args.dtype)
        original = (opened.model, opened.tokenizer)
    summary = suite.run(EvalContext(loaded, Path(args.out), settings, data, options, original, original_name))
    print(suite.table(summary))
    print(f"\nlogs and summary.json in {args.out} ({summary['wall_seconds']} s)")
    return 0


def _default(value, default):
    return default if value is None else value


# ---------------------------------------------------------------- tofu-aggregate

def _add_aggregate(commands) -> None:
    p = commands.add_parser(
        "tofu-aggregate", help="TOFU's Model Utility and Forget Quality from two aggregated eval logs",
        description="Read a model's and a retain model's aggregated TOFU eval logs (eval_log_aggregated.json, "
                    "or an `unlearn eval` output directory) and print the twelve figures, Model Utility and "
                    "Forget Quality as JSON, as TOFU's aggregate_eval_stat.py computes them.")
    p.add_argument("target", metavar="TARGET", help="the evaluated model's aggregated eval log")
    p.add_argument("retain", metavar="RETAIN", help="the retain model's aggregated eval log")
    p.set_defaults(handler=run_aggregate)


def run_aggregate(args) -> int:
    from .evaluator import read_eval_output
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
    p.add_argument("evals", nargs="+", metavar="EVAL_DIR", help="`unlearn eval --suite tofu` output directories")
    p.add_argument("--original", required=True, help="the original model's eval directory (its Model Utility)")
    p.add_argument("--utility-floor", type=float, default=0.9, help="share of the original's utility to keep")
    p.set_defaults(handler=run_best_checkpoint)


def run_best_checkpoint(args) -> int:
    from .evaluator import SUMMARY, read_json_file
    from .selection import select_best

    def figures(directory):
        return read_json_file(Path(directory) / SUMMARY, "eval summary")["figures"]

    evaluations = [{"eval": d, **figures(d)} for d in args.evals]
    pick = select_best(evaluations, figures(args.original)["Model Utility"], args.utility_floor)
    chosen = pick["evaluation"]
    print(json.dumps({"best": chosen["eval"], "meets_floor": pick["meets_floor"], "rule": pick["rule"],
                      "Forget Quality": chosen["Forget Quality"], "Model Utility": chosen["Model Utility"]}, indent=2))
    return 0


# ---------------------------------------------------------------- finetune

def _add_finetune(commands) -> None:
    p = commands.add_parser(
        "finetune", help="supervised fine-tuning on QA data (TOFU's learn stage); same run directory as train",
        description="Plain supervised fine-tuning (answer NLL), LoRA or full. Example: unlearn finetune "
                    "--model bundled --data tofu:full --out runs/tofu_target --epochs 5 --lr 2e-5")
    p.add_argument("--model", default=argparse.SUPPRESS, help="'bundled', a model directory or a hub id")
    p.add_argument("--data", dest="forget", metavar="DATA", default=argparse.SUPPRESS,
                   help="training data: .txt/.jsonl/.json/.csv or a TOFU split such as tofu:full")
    p.add_argument("--out", default=argparse.SUPPRESS, help="run directory to write")
    for flag, kind in (("--epochs", float), ("--max-steps", int), ("--lr", float), ("--batch-size", int),
                       ("--grad-accum", int), ("--max-length", int), ("--lora-r", int), ("--lora-alpha", int),
                       ("--seed", int), ("--save-steps", int), ("--weight-decay", float)):
        p.add_argument(flag, type=kind, default=argparse.SUPPRESS, help="as for `unlearn train`")
    for flag in ("--lora-targets", "--device"):
        p.add_argument(flag, default=argparse.SUPPRESS, help="as for `unlearn train`")
    for flag in ("--lora", "--resume", "--overwrite", "--trust-remote-code"):
        p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                       help="as for `unlearn train`")
    p.set_defaults(handler=run_finetune)


FINETUNE_KEYS = ("model", "forget", "out", "epochs", "max_steps", "lr", "batch_size", "grad_accum", "max_length",
                 "lora_r", "lora_alpha", "seed", "save_steps", "weight_decay", "lora_targets", "device", "lora",
                 "resume", "overwrite", "trust_remote_code")


def finetune_config(args):
    from ..config import UnlearnConfig
    from ..errors import require

    settings = {k: getattr(args, k) for k in FINETUNE_KEYS if hasattr(args, k)}
    require(settings.get("resume") or "forget" in settings, "no training data given",
            "pass --data FILE (or a TOFU split such as tofu:full)")
    return UnlearnConfig.from_dict({**settings, "method": "sft"})


def run_finetune(args) -> int:
    from ..cli import _duration, _stop_on_signals
    from ..runs import RunState
    from ..trainer import train
    import threading

    stop_event = threading.Event()
    _stop_on_signals(stop_event)
    result = train(finetune_config(args), stop_event=stop_event)
    if not result.is_main_process:
        return 0
    if result.state == RunState.STOPPED:
        print(f"Stopped at step {result.step}; continue with: unlearn finetune --out {result.run_dir} --resume")
        return 0
    s = result.summary
    print(f"Fine-tuning finished: {s['steps']} steps in {_duration(s['wall_seconds'])}.")
    if "forget_nll" in s.get("before", {}):
        print(f"  training-data NLL {s['before']['forget_nll']:.3f} -> {s['after']['forget_nll']:.3f}")
    print(f"  {'LoRA adapter' if s.get('lora') else 'model'}: {s['model']}\n"
          f"  evaluate it: unlearn eval {result.run_dir} --suite tofu --out {result.run_dir}/eval")
    return 0
