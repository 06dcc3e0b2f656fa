"""`unlearn export RUN --out BUNDLE` and `unlearn chat BUNDLE --format FORMAT`. The formats, their variant
flags and their defaults come from the format registry (export/formats/), which loads no runtime, so that
`unlearn --help` stays light."""
from __future__ import annotations

import argparse
import json
import signal
import sys

from core.paths import absolute, absolute_spec, writable_folder

from .formats import format_names, formats


def add_commands(commands) -> None:
    """Add this part's subparsers to `unlearn`."""
    export = commands.add_parser(
        "export", help="turn a finished run into " + " / ".join(fmt.title or fmt.name for fmt in formats()) +
                       " artifacts with parity checks",
        description="Example: unlearn export runs/demo --formats hf,gguf,onnx --gguf-quant f16,q8_0,q4_k_m "
                    "--out bundles/demo")
    export.add_argument("run", help="run directory (the --out of `unlearn train`)")
    export.add_argument("--out", required=True, help="bundle directory to write (whole or not at all)")
    defaults = [fmt.name for fmt in formats() if fmt.in_default]
    export.add_argument("--formats", default=",".join(defaults),
                        help="comma-separated, any of: " + "; ".join(f"{fmt.name}: {fmt.summary}" for fmt in formats())
                        + " (default: %(default)s)")
    for fmt in formats():
        if fmt.variants:
            variants = fmt.variants
            export.add_argument(variants.flag, dest=variants.keyword, default=",".join(variants.default),
                                metavar=variants.flag.lstrip("-").replace("-", "_").upper(),
                                help=f"{variants.kind}s: {', '.join(variants.choices)} (default: %(default)s)")
    export.add_argument("--parity", action=argparse.BooleanOptionalAction, default=True,
                        help="run every artifact in its runtime and write parity.json (default: on)")
    export.add_argument("--parity-examples", type=int, default=8, metavar="N",
                        help="forget and retain prompts each used by the checks (default: 8)")
    export.add_argument("--forget", help="forget set for the checks (default: the run's)")
    export.add_argument("--retain", help="retain set for the checks (default: the run's)")
    export.add_argument("--overwrite", action="store_true", help="replace a bundle already in --out")
    shown = export.add_mutually_exclusive_group()
    shown.add_argument("--quiet", action="store_true", help="print only warnings and errors (no progress)")
    shown.add_argument("--json", action="store_true",
                       help="print one JSON object (bundle, artifacts, metrics, warnings) and nothing else")
    export.set_defaults(handler=run_export)

    chat = commands.add_parser("chat", help="chat with an exported artifact (streamed)",
                               description="Example: unlearn chat bundles/demo --format gguf --variant q4_k_m")
    chat.add_argument("bundle", help="bundle directory written by `unlearn export`")
    chat.add_argument("--format", default="gguf", choices=format_names(), help="runtime to chat with (default: gguf)")
    chat.add_argument("--variant", help=" or ".join(f"{fmt.variants.kind} ({', '.join(fmt.variants.default)}, ...)"
                                                    for fmt in formats() if fmt.variants))
    chat.add_argument("--max-new-tokens", type=int, default=256, metavar="N")
    chat.add_argument("--temperature", type=float, default=0.0, metavar="X", help="0: greedy (default)")
    chat.set_defaults(handler=run_chat)

    serve = commands.add_parser(
        "serve", help="serve an exported artifact as an OpenAI-compatible chat API (127.0.0.1 by default)",
        description="Example: unlearn serve bundles/demo --format gguf --variant q8_0 --port 8000, then "
                    "OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='none')")
    serve.add_argument("bundle", help="bundle directory written by `unlearn export`")
    serve.add_argument("--format", default="gguf", choices=format_names(),
                       help="runtime to serve: gguf in llama.cpp's server, the others in a small server of "
                            "our own (default: gguf)")
    serve.add_argument("--variant", help="which artifact of the format (as for unlearn chat; gguf: also lora)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this "
                                                           "machine only)")
    serve.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    serve.set_defaults(handler=run_serve)

    push = commands.add_parser(
        "push", help="upload a bundle to a Hugging Face model repository (needs a token: hf auth login)",
        description="Example: unlearn push bundles/demo my-name/smollm2-unlearned --private")
    push.add_argument("bundle", help="bundle directory written by `unlearn export`")
    push.add_argument("repo_id", help="NAME or ORG/NAME of the model repository (created if absent)")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.set_defaults(handler=run_push)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def run_export(args) -> int:
    from .bundle import export_run

    variants = {fmt.variants.keyword: _split(getattr(args, fmt.variants.keyword)) for fmt in formats() if fmt.variants}
    # Every path the user gave, made absolute once here: the converters run in another folder. An --out that
    # cannot be written is refused before any model loads.
    run, out = absolute(args.run), writable_folder(args.out, "--out")
    forget, retain = (absolute_spec(spec) if spec else None for spec in (args.forget, args.retain))
    chatty = not (args.quiet or args.json)
    # SIGTERM must unwind like Ctrl-C so that the staging directory is removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        manifest = export_run(run, out, formats=_split(args.formats), parity_check=args.parity,
                              parity_examples=args.parity_examples, forget=forget, retain=retain,
                              overwrite=args.overwrite, show_progress=chatty,
                              log=(lambda message: print(message, flush=True)) if chatty else (lambda message: None),
                              **variants)
    except KeyboardInterrupt:
        print(f"export interrupted: nothing was written to {out}", file=sys.stderr, flush=True)
        return 130
    if args.json:
        print(json.dumps(export_summary(out, manifest), indent=2))
        return 0
    if chatty and manifest.get("metrics_scored_on"):
        from core.scoring import describe_scored_on

        print(f"  NLL over the {describe_scored_on(manifest['metrics_scored_on'])} (each artifact in its runtime)")
    for name, scores in manifest["metrics"].items():
        if chatty:
            print(f"  {name:<12} token agreement {scores['token_agreement']:.3f}  "
                  f"forget NLL {scores.get('forget_nll', float('nan')):.3f}  "
                  f"retain NLL {scores.get('retain_nll', float('nan')):.3f}")
    for warning in manifest["warnings"]:
        print(f"warning: {warning}", file=sys.stderr if args.quiet else sys.stdout)
    return 0


def export_summary(bundle, manifest: dict) -> dict:
    """What `unlearn export --json` prints: where the bundle is, its artifacts, their parity figures, warnings."""
    return {"bundle": str(bundle), "formats": manifest["formats"], "artifacts": manifest["artifacts"],
            "metrics": manifest["metrics"], "warnings": manifest["warnings"], "timings_s": manifest["timings_s"]}


def run_serve(args) -> int:
    from .serve import serve

    serve(absolute(args.bundle), args.format, args.variant, args.host, args.port,
          log=lambda message: print(message, flush=True))
    return 0


def run_push(args) -> int:
    from .push import push

    push(absolute(args.bundle), args.repo_id, private=args.private, log=lambda message: print(message, flush=True))
    return 0


def run_chat(args) -> int:
    from .chat import ChatSession, chat_loop

    session = ChatSession(absolute(args.bundle), args.format, args.variant)
    print(f"chatting with {session.artifact} (Ctrl-D or /quit to leave)")
    try:
        chat_loop(session, max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    except KeyboardInterrupt:
        print()
    finally:
        session.close()
    return 0
