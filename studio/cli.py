"""`unlearn studio`: open the Gradio app (desktop GUI in the browser, or a Hugging Face Space)."""
from __future__ import annotations

import os

from core.errors import require
from core.evaluation.cli import add_dtype_flag
from core.models import resolve_model
from core.paths import input_arg, output_folder_arg


def add_commands(commands) -> None:
    studio = commands.add_parser("studio", help="open the Unlearning Studio web app")
    studio.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: reachable on the network)")
    studio.add_argument("--port", type=int, default=7860)
    studio.add_argument("--share", action="store_true", help="also make a temporary public gradio.live link")
    studio.add_argument("--auth", help="USER:PASSWORD required to open the page (or env UNLEARN_STUDIO_AUTH)")
    studio.add_argument("--runs-dir", default="runs", type=output_folder_arg("--runs-dir"),
                        help="folder for runs and uploads")
    studio.add_argument("--model-dir", action="append", default=[], type=input_arg,
                        help="a local HF model directory to offer")
    studio.add_argument("--online", action="store_true", help="offer Hugging Face hub ids (needs a network)")
    studio.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add_dtype_flag(studio)
    studio.add_argument("--no-browser", action="store_true", help="do not open a browser window")
    studio.set_defaults(handler=run_studio)


def run_studio(args) -> int:
    from .app import create_studio, launch

    auth = args.auth or os.environ.get("UNLEARN_STUDIO_AUTH")
    if auth:
        require(":" in auth, "--auth must look like USER:PASSWORD", "for example --auth alice:s3cret")
        auth = tuple(auth.split(":", 1))
    for path in args.model_dir:
        resolve_model(path)   # a directory that is not a model fails here, not in the page
    studio = create_studio(args.runs_dir, local_models=args.model_dir, online=args.online, device=args.device,
                           dtype=args.dtype)
    launch(studio, host=args.host, port=args.port, share=args.share, auth=auth, inbrowser=not args.no_browser)
    return 0
