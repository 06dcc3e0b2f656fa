"""`unlearn audit RUN --out DIR [--attacks relearn,benign,quantize,rephrase]`."""
from __future__ import annotations


def add_commands(commands) -> None:
    p = commands.add_parser("audit", help="does the forgetting survive relearning, quantisation and rephrasing?",
                            description="Attack a finished run and report how much of the forgotten data comes "
                                        "back. Example: unlearn audit runs/demo --out runs/demo/audit")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--out", required=True, help="where audit.json and audit.md go")
    p.add_argument("--attacks", default="relearn,benign,quantize,rephrase",
                   help="comma-separated: relearn, benign, quantize, rephrase (default: all)")
    p.add_argument("--relearn-steps", type=int, default=30, help="fine-tuning steps of the relearn attack")
    p.add_argument("--relearn-fraction", type=float, default=0.5, help="share of the forget set relearned")
    p.add_argument("--benign-steps", type=int, default=30, help="fine-tuning steps on retain data (benign)")
    p.add_argument("--relearn-lr", type=float, default=None, help="their learning rate (default: the run's)")
    p.add_argument("--max-samples", type=int, default=40, help="forget and retain examples measured")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="weights of the scored models (auto: bf16 where the CPU/GPU runs it fast)")
    p.add_argument("--update", action="store_true",
                   help="redo only --attacks and keep the other attacks' results of the audit already in --out")
    p.add_argument("--nice", type=int, default=0, metavar="N", help="lower this process's CPU priority by N")
    p.set_defaults(handler=run)


def run(args) -> int:
    from core.errors import require

    from . import markdown, run_audit

    require(0 < args.relearn_fraction < 1, f"--relearn-fraction must be between 0 and 1, got {args.relearn_fraction}",
            "use for example --relearn-fraction 0.5")
    require(args.relearn_steps >= 1 and args.benign_steps >= 1, "the fine-tuning attacks need at least one step",
            "use for example --relearn-steps 30")
    import os
    import signal

    if args.nice and hasattr(os, "nice"):
        os.nice(args.nice)

    def stop(signum, frame):   # Stop in the studio, or Ctrl-C: status "stopped", no half report
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    report = run_audit(args.run, args.out, args.attacks.split(","),
                       {"relearn_steps": args.relearn_steps, "relearn_fraction": args.relearn_fraction,
                        "benign_steps": args.benign_steps, "relearn_lr": args.relearn_lr},
                       args.max_samples, args.max_new_tokens, args.batch_size, args.device, dtype=args.dtype,
                       update=args.update)
    print(markdown(report))
    return 0
