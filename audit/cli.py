"""`unlearn audit RUN --out DIR [--attacks relearn,benign,quantize,rephrase]`: the --attacks help and one flag
per attack option are made from the attack registry (audit/attacks/), so a new attack needs no edit here."""
from __future__ import annotations

import argparse
import json

from core.paths import input_arg, output_folder_arg
from core.progress import UnitsBar, silence_bars
from core.tracking import log_figures

OPTION_PREFIX = "attack_option__"   # argparse destinations of the attack options, apart from the other flags


def add_commands(commands) -> None:
    from .attacks import ATTACKS, attack_names, default_attacks
    from .attacks.finetune import SEEDS_AT

    p = commands.add_parser("audit", help="does the forgetting survive relearning, quantisation and rephrasing?",
                            description="Attack a finished run and report how much of the forgotten data comes "
                                        "back. Example: unlearn audit runs/demo --out runs/demo/audit")
    p.add_argument("run", metavar="RUN", type=input_arg)
    p.add_argument("--out", required=True, type=output_folder_arg("--out"), help="where audit.json and audit.md go")
    p.add_argument("--attacks", default=",".join(default_attacks()),
                   help="comma-separated, from: " + "; ".join(f"{name} ({ATTACKS[name].summary})"
                                                              for name in attack_names())
                        + f" (default: {','.join(default_attacks())})")
    add_attack_flags(p)
    p.add_argument("--max-samples", type=int, default=40, help="forget and retain examples measured")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=8, help="examples per batch when scoring answers' NLL")
    p.add_argument("--generate-batch-size", type=int, default=32, help="answers generated together")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="weights of the scored models (auto: bf16 where the CPU/GPU runs it fast)")
    p.add_argument("--control", metavar="MODEL", type=input_arg,
                   help="a model that never learned the forget data (a folder, bundled, demo, a run: its final "
                        "model); every fine-tuning attack trains it alike and the verdicts rest on the residual")
    p.add_argument("--control-cache", metavar="DIR", type=output_folder_arg("--control-cache"),
                   help="keep the control's attacked figures in DIR: auditing more runs against the same control "
                        "with the same attacks reuses them instead of fine-tuning the control again")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="repeat the fine-tuning attacks' split and training with N seeds (intervals over seeds too)")
    p.add_argument("--seeds-at", choices=SEEDS_AT, default="worst",
                   help="where the repeats run: the learning rates on the first seed and the other seeds only at "
                        "the attacker's best (worst, the default: fewer fine-tunings), or every learning rate with "
                        "every seed (all: an interval over seeds at every point)")
    p.add_argument("--update", action="store_true",
                   help="redo only --attacks and keep the other attacks' results of the audit already in --out")
    p.add_argument("--nice", type=int, default=0, metavar="N", help="lower this process's CPU priority by N")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--quiet", action="store_true", help="print nothing but errors (the report is in --out)")
    shown.add_argument("--json", action="store_true", help="print the report as one JSON object and nothing else")
    p.set_defaults(handler=run)


def add_attack_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per option name the registered attacks declare. Values stay text here: the audit checks them
    against the chosen attacks' declarations, so a bad one is an `error:` naming the attack, not a usage line."""
    from .attacks import declared_options

    group = parser.add_argument_group("attack options (each attack reads its own)")
    for name, takers in declared_options().items():
        param = takers[0][1]
        help_text = f"{param.help}, {param.range_text()} (default {param.default}; " \
                    f"attacks: {', '.join(attack.name for attack, _ in takers)})"
        group.add_argument(param.flag, dest=OPTION_PREFIX + name, default=argparse.SUPPRESS,
                           type=_true_or_false if param.kind is bool else str,
                           metavar={int: "N", float: "X"}.get(param.kind, "VALUE"),
                           help=help_text.replace("%", "%%"))   # argparse formats help with %


def _true_or_false(text: str):
    """A yes/no option's text as a bool; anything else stays text, which the declaration then refuses."""
    return {"true": True, "yes": True, "false": False, "no": False}.get(text.lower(), text)


def run(args) -> int:
    import os
    import signal

    from . import markdown, run_audit

    if args.nice and hasattr(os, "nice"):
        os.nice(args.nice)

    def stop(signum, frame):   # Stop in the studio, or Ctrl-C: status "stopped", no half report
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    options = {key.removeprefix(OPTION_PREFIX): value for key, value in vars(args).items()
               if key.startswith(OPTION_PREFIX)}
    chatty = not (args.quiet or args.json)
    bar = UnitsBar("audit", unit="unit")   # a unit: one fine-tuning of a sweep, or one other attack
    if not chatty:
        silence_bars()
    try:
        report = run_audit(args.run, args.out, args.attacks.split(","), options, args.max_samples,
                           args.max_new_tokens, args.batch_size, args.device,
                           log=bar.say if chatty else (lambda message: None), dtype=args.dtype, update=args.update,
                           control=args.control, control_cache=args.control_cache, seeds=args.seeds,
                           progress=bar if chatty else None, generate_batch_size=args.generate_batch_size,
                           seeds_at=args.seeds_at)
    finally:
        bar.close()
    log_figures(args.run, "audit", {r["name"]: {"recovery": r.get("recovery"), "residual": r.get("residual")}
                                    for r in report.get("results", [])})   # to the run's --report-to trackers, if any
    if args.json:
        print(json.dumps(report, indent=2))
    elif chatty:
        print(markdown(report))
    return 0
