"""`unlearn export RUN --out BUNDLE` and `unlearn chat BUNDLE --format gguf|onnx|hf`."""
from __future__ import annotations

import argparse
import signal

# The defaults of export.bundle, repeated so that `unlearn --help` does not import torch and the runtimes.
FORMATS = ("hf", "gguf", "onnx")
DEFAULT_QUANTS = ("f16", "q8_0", "q4_k_m")
DEFAULT_PRECISIONS = ("fp32", "fp16", "int4")


def add_commands(commands) -> None:
    """Add this part's subparsers to `unlearn` (called by core.cli.build_parser)."""
    export = commands.add_parser(
        "export", help="turn a finished run into Hugging Face / GGUF / ONNX artifacts with parity checks",
        description="Example: unlearn export runs/demo --formats hf,gguf,onnx --gguf-quant f16,q8_0,q4_k_m "
                    "--out bundles/demo")
    export.add_argument("run", help="run directory (the --out of `unlearn train`)")
    export.add_argument("--out", required=True, help="bundle directory to write (whole or not at all)")
    export.add_argument("--formats", default=",".join(FORMATS), help="comma-separated: hf, gguf, onnx")
    export.add_argument("--gguf-quant", default=",".join(DEFAULT_QUANTS),
                        help="GGUF types: f32, f16, bf16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0, ... (default: %(default)s)")
    export.add_argument("--onnx-precision", default=",".join(DEFAULT_PRECISIONS), help="ONNX precisions (default: %(default)s)")
    export.add_argument("--parity", action=argparse.BooleanOptionalAction, default=True,
                        help="run every artifact in its runtime and write parity.json (default: on)")
    export.add_argument("--parity-examples", type=int, default=8, metavar="N",
                        help="forget and retain prompts each used by the checks (default: 8)")
    export.add_argument("--forget", help="forget set for the checks (default: the run's)")
    export.add_argument("--retain", help="retain set for the checks (default: the run's)")
    export.add_argument("--overwrite", action="store_true", help="replace a bundle already in --out")
    export.set_defaults(handler=run_export)

    chat = commands.add_parser("chat", help="chat with an exported artifact (streamed)",
                               description="Example: unlearn chat bundles/demo --format gguf --variant q4_k_m")
    chat.add_argument("bundle", help="bundle directory written by `unlearn export`")
    chat.add_argument("--format", default="gguf", choices=FORMATS, help="runtime to chat with (default: gguf)")
    chat.add_argument("--variant", help="GGUF quant (q8_0, ...) or ONNX precision (fp32, int4, ...)")
    chat.add_argument("--max-new-tokens", type=int, default=256, metavar="N")
    chat.add_argument("--temperature", type=float, default=0.0, metavar="X", help="0: greedy (default)")
    chat.set_defaults(handler=run_chat)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def run_export(args) -> int:
    from .bundle import export_run

    # SIGTERM must unwind like Ctrl-C so that the staging directory is removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        manifest = export_run(args.run, args.out, formats=_split(args.formats), gguf_quants=_split(args.gguf_quant),
                              onnx_precisions=_split(args.onnx_precision), parity_check=args.parity,
                              parity_examples=args.parity_examples, forget=args.forget, retain=args.retain,
                              overwrite=args.overwrite, log=lambda message: print(message, flush=True))
    except KeyboardInterrupt:
        print(f"export interrupted: nothing was written to {args.out}", flush=True)
        return 130
    for name, scores in manifest["metrics"].items():
        print(f"  {name:<12} token agreement {scores['token_agreement']:.3f}  "
              f"forget NLL {scores.get('forget_nll', float('nan')):.3f}  "
              f"retain NLL {scores.get('retain_nll', float('nan')):.3f}")
    for warning in manifest["warnings"]:
        print(f"warning: {warning}")
    return 0


def run_chat(args) -> int:
    from .chat import ChatSession, chat_loop

    session = ChatSession(args.bundle, args.format, args.variant)
    print(f"chatting with {session.artifact} (Ctrl-D or /quit to leave)")
    try:
        chat_loop(session, max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    except KeyboardInterrupt:
        print()
    finally:
        session.close()
    return 0
