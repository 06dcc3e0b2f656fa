"""Core's commands: `train`, `finetune`, `methods`, `stop`, `status`, `prepare-model`, and evaluation's
(`eval`, `suites`, ...). The `unlearn` command (unlearn/cli.py) composes these with the other parts'
commands; `python -m core.cli` runs core's alone (what `accelerate launch -m core.cli train` uses).

Settings come from UnlearnConfig's fields: defaults < `--config FILE` (YAML/JSON) < flags given.
Bad input prints one `error:` line and a `fix:` line, never a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from dataclasses import replace

from .config import UnlearnConfig, cli_fields, read_config_file
from .errors import UnlearnError
from .paths import input_arg
from .progress import duration
from .runs import RunState

# The settings only unlearning has: `finetune` (plain supervised training) shares every other flag of `train`.
UNLEARNING_ONLY = ("method", "forget", "retain", "normal", "retain_columns", "normal_columns", "kl_positions",
                   "salient_modules", "quant_aware", "quant_aware_format")


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse `argv` and run the chosen command: an UnlearnError becomes `error:` and `fix:` lines (exit 2),
    Ctrl-C or SIGTERM one line (exit 130); never a traceback. Each command writes atomically, so an
    interrupted one leaves its old files or none."""
    try:   # user paths are resolved and output folders checked as the arguments are read (core/paths.py)
        args = parser.parse_args(argv)
    except UnlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not hasattr(args, "handler"):
        parser.print_help()
        return 0
    with _sigterm_as_ctrl_c():
        try:
            return args.handler(args) or 0
        except UnlearnError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted: nothing half-written was left behind", file=sys.stderr)
            return INTERRUPTED_EXIT


INTERRUPTED_EXIT = 130   # the shell's code for a process ended by Ctrl-C


@contextlib.contextmanager
def _sigterm_as_ctrl_c():
    """SIGTERM (a `kill`, a stopped container) unwinds like Ctrl-C, so that `finally` blocks clean up; the
    handlers are put back afterwards (tests call main() in one process)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unlearn", description="Make a language model forget chosen data.")
    add_commands(parser.add_subparsers(title="commands"))
    return parser


def add_commands(commands) -> None:
    """Add core's subcommands (training, runs, evaluation) to a parser's subparsers."""
    from .evaluation.cli import add_commands as add_evaluation_commands

    train = commands.add_parser("train", help="unlearn a forget set from a model",
                                description="Unlearn a forget set. Example: unlearn train --model bundled "
                                            "--method npo_rt --forget tofu:forget01 --retain tofu:retain99 --out runs/demo")
    add_training_flags(train)
    add_config_flags(train)
    train.set_defaults(handler=run_train)

    finetune = commands.add_parser(
        "finetune", help="supervised fine-tuning on QA data (TOFU's learn stage); same run directory as train",
        description="Plain supervised fine-tuning (answer NLL), LoRA or full, with the training flags of "
                    "`unlearn train`. Example: unlearn finetune --model bundled --data tofu:full "
                    "--out runs/tofu_target --epochs 5 --lr 2e-5")
    finetune.add_argument("--data", dest="forget", metavar="DATA", default=argparse.SUPPRESS,
                          help="training data: .txt/.jsonl/.json/.csv or a TOFU split such as tofu:full")
    add_training_flags(finetune)
    add_config_flags(finetune, skip=UNLEARNING_ONLY, method_flags=False)
    finetune.set_defaults(handler=run_finetune)

    from .plan import add_command as add_plan_command

    add_plan_command(commands)
    methods = commands.add_parser("methods", help="list the unlearning methods and their defaults")
    methods.set_defaults(handler=run_methods)

    stop = commands.add_parser("stop", help="ask a running run to stop at its next step (keeps a checkpoint)")
    stop.add_argument("run", type=input_arg, help="run directory")
    stop.set_defaults(handler=run_stop)

    status = commands.add_parser("status", help="show a run's status")
    status.add_argument("run", type=input_arg, help="run directory")
    status.add_argument("--json", action="store_true", help="print status.json as it is (for scripts)")
    status.set_defaults(handler=run_status)

    prepare = commands.add_parser("prepare-model", help="convert the bundled (and demo) model once; print the paths")
    prepare.set_defaults(handler=run_prepare_model)
    add_evaluation_commands(commands)


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    """What `train` and `finetune` take besides the config fields."""
    parser.add_argument("--config", help="YAML or JSON file of settings (flags given here override it)")
    parser.add_argument("--nice", type=int, default=0, metavar="N",
                        help="lower this process's CPU priority by N (the studio uses 10 so its page stays "
                             "responsive while training)")


def add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = (), method_flags: bool = True) -> None:
    """One flag per UnlearnConfig field (but `skip`); only flags actually given reach the config (SUPPRESS)."""
    for f in cli_fields():
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type)
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})"
        if "bool" in kind:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            convert = int if "int" in kind else float if "float" in kind else str
            metavar = {int: "N", float: "X", str: "TEXT"}[convert]
            parser.add_argument(flag, type=convert, default=argparse.SUPPRESS, help=help_text, metavar=metavar)
    if method_flags:
        add_method_flags(parser)


def add_method_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per hyper-parameter name the registered methods declare, its help gathered from each
    method that takes it; `unlearn train` checks the value against the chosen method's declaration."""
    from .methods import METHODS, parameter_names, unlearning_methods

    group = parser.add_argument_group("method hyper-parameters (each method takes its own; `unlearn methods` "
                                      "lists them with their defaults and sources)")
    for name in parameter_names():
        declared = [(method, p) for method in METHODS.values() for p in method.params if p.name == name]
        meanings: dict[tuple[str, str], list[str]] = {}   # one line per meaning: which methods, which defaults
        for method, p in declared:
            if method.name in unlearning_methods():
                meanings.setdefault((p.help, p.range_text()), []).append(f"{method.name} {p.default}")
        users = [f"{help_text}, {allowed} (default: {', '.join(defaults)})"
                 for (help_text, allowed), defaults in meanings.items()]
        param = declared[0][1]
        convert = {bool: _boolean, int: int, float: float, str: str}[param.kind]
        group.add_argument(param.flag, dest=f"{PARAM_PREFIX}{name}", type=convert, default=argparse.SUPPRESS,
                           metavar={bool: "BOOL", int: "N", float: "X", str: "TEXT"}[param.kind],
                           help=("; ".join(users) or param.help).replace("%", "%%"))   # argparse formats help with %


PARAM_PREFIX = "method_param__"   # argparse destinations of the method flags, apart from the config fields


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "yes", "1", "on"):
        return True
    if text.lower() in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def config_from_args(args: argparse.Namespace) -> UnlearnConfig:
    settings = read_config_file(args.config) if getattr(args, "config", None) else {}
    settings.update({f.name: getattr(args, f.name) for f in cli_fields() if hasattr(args, f.name)})
    given = {key.removeprefix(PARAM_PREFIX): value for key, value in vars(args).items() if key.startswith(PARAM_PREFIX)}
    if given:   # flags override the config file's method_params (or its top-level hyper-parameters)
        settings["method_params"] = {**(settings.get("method_params") or {}), **given}
    return UnlearnConfig.from_dict(settings)


# ---------------------------------------------------------------- commands

def run_train(args) -> int:
    return _train_and_report(config_from_args(args), args.nice)


def run_finetune(args) -> int:
    from .errors import require

    config = config_from_args(args)
    require(config.resume or bool(config.forget), "no training data given",
            "pass --data FILE (or a TOFU split such as tofu:full)")
    return _train_and_report(replace(config, method="sft"), args.nice)


def _train_and_report(config: UnlearnConfig, nice: int) -> int:
    from .trainer import StopRequest, train

    if nice and hasattr(os, "nice"):
        os.nice(nice)
    stop = StopRequest()
    _stop_on_signals(stop)
    try:
        result = train(config, stop_event=stop)
    except KeyboardInterrupt:   # the trainer has recorded the run as stopped or interrupted
        from .runs import RunDir

        print(RunDir(config.out).status().get("message", "interrupted"), file=sys.stderr)
        return INTERRUPTED_EXIT
    if result.is_main_process:
        print(format_summary(result))
    return 0


def _stop_on_signals(stop) -> None:
    """Inside the training loop the first Ctrl-C (or SIGTERM) stops at the next step with a checkpoint, and a
    second aborts. Outside it (loading, scoring the original, saving) there is no step to wait for: the
    first signal interrupts at once (core.trainer.StopRequest)."""
    def handler(signum, frame):
        if stop.is_set() or not stop.at_step_boundary:
            raise KeyboardInterrupt
        stop.set()
        print("\nstopping after this step (a checkpoint is kept; Ctrl-C again to abort)", file=sys.stderr)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def format_summary(result) -> str:
    from .runs import RunDir

    method = RunDir(result.run_dir).config().get("method")
    finetuning = method == "sft"
    command = "finetune" if finetuning else "train"
    if result.state == RunState.STOPPED:
        return (f"Stopped at step {result.step}. Checkpoint kept in {result.run_dir}/checkpoints; "
                f"continue with: unlearn {command} --out {result.run_dir} --resume")
    s = result.summary
    lines = [f"{'Fine-tuning' if finetuning else 'Unlearning'} finished: {s['steps']} steps in "
             f"{duration(s['wall_seconds'])}."]
    labels = (("forget_nll", "training-data NLL"),) if finetuning else (("forget_nll", "forget NLL"),
                                                                       ("retain_nll", "retain NLL"))
    for key, label in labels:
        if key in s.get("before", {}) and key in s.get("after", {}):
            lines.append(f"  {label:<11} {s['before'][key]:.3f} -> {s['after'][key]:.3f}")
    if s.get("scored_on"):   # the same model gives the same NLL in eval/export/audit on the same basis
        from .scoring import describe_scored_on

        lines.append(f"  (answer-token NLL over the {describe_scored_on(s['scored_on'])})")
    if _second_stage(method):   # its start model already forgot: the damaged copy should come back to it
        lines.append("  (a second stage: both start at the model it was given and should end close to it; "
                     "the damage before step 1 shows in neither)")
    elif not finetuning:
        lines.append("  (higher on forget = more forgotten; retain should stay close)")
    if s.get("mfu") is not None:
        lines.append(f"  speed: {s['tokens_per_second']:.0f} tokens/s, MFU {100 * s['mfu']:.1f}% of this machine's "
                     f"measured {s['mfu_dtype']} matmul peak")
    kind = "LoRA adapter" if s.get("lora") else "model"
    lines.append(f"  {kind}: {s['model']}")
    lines.append(f"  metrics: {result.run_dir}/metrics.jsonl   config: {result.run_dir}/config.json")
    if finetuning:
        lines.append(f"  evaluate it: unlearn eval {result.run_dir} --suite tofu --out {result.run_dir}/eval")
    return "\n".join(lines)


def _second_stage(method: str | None) -> bool:
    from .methods import METHODS

    return bool(getattr(METHODS.get(method), "second_stage", False))   # False for a method no longer installed


def run_methods(args) -> int:
    from .methods import unlearning_methods

    for name, method in unlearning_methods().items():
        print(f"{name:<10} {method.summary}\n{'':<10} paper: {method.paper}")
        for p in method.params:
            print(f"{'':<10} {p.flag} {p.default}  ({p.range_text()}) {p.help}; default from {p.source}")
        if method.salient_modules:
            print(f"{'':<10} --salient-modules {method.salient_modules}  (SURE's saliency: the share of neurons "
                  f"each step updates)")
    return 0


def run_stop(args) -> int:
    from .runs import RunDir

    run = RunDir(args.run)
    if not run.holds_run():
        raise UnlearnError(f"{args.run} is not a run directory", "name the --out directory of a run")
    if not run.is_active():
        print(f"the run in {args.run} is not running ({run.status().get('state')})")
        return 0
    run.request_stop()
    print("stop requested: the run will save a checkpoint and stop after its current step")
    return 0


def run_status(args) -> int:
    import json

    from .runs import RunDir

    run = RunDir(args.run)
    if not run.holds_run():
        raise UnlearnError(f"{args.run} is not a run directory", "name the --out directory of a run")
    status = run.status()
    print(json.dumps(status, indent=2) if args.json else describe_status(status, run.config()))
    return 0


def describe_status(status: dict, config: dict, now: float | None = None) -> str:
    """A run's status.json in words: 'running: npo_rt, step 12 of 40 (30 %), about 1m 10s left; updated 4s
    ago', then its message or error on lines of their own."""
    import time

    state = status.get("state", RunState.QUEUED.value)
    method = status.get("method") or config.get("method")
    head = f"{state}: {method}" if method else str(state)
    if status.get("total_steps"):
        step, total = status.get("step", 0), status["total_steps"]
        head += f", step {step} of {total} ({100 * step / total:.0f} %)"
    elif status.get("step") is not None:
        head += f", step {status['step']}"
    if state == RunState.RUNNING and status.get("eta_seconds") is not None:
        head += f", about {duration(status['eta_seconds'])} left"
    if status.get("updated_at") is not None:
        head += f"; updated {duration(max(0.0, (now or time.time()) - status['updated_at']))} ago"
    notes = [status[key] for key in ("message", "error") if status.get(key) and status[key] != "done"]
    return "\n".join([head, *(f"  {note}" for note in notes)])


def run_prepare_model(args) -> int:
    """Convert the bundled model (and build the studio's demo model) once, ahead of first use."""
    from .models import bundled_model_dir, demo_adapter_dir, demo_model_dir

    print(bundled_model_dir())
    if (demo_adapter_dir() / "adapter_model.safetensors").is_file():
        print(demo_model_dir())
    return 0


if __name__ == "__main__":
    sys.exit(main())
