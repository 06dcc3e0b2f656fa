"""`unlearn serve BUNDLE --format gguf|onnx|hf`: an OpenAI-compatible chat server (POST /v1/chat/completions,
streamed or not; GET /v1/models) on 127.0.0.1 by default.

GGUF runs in llama.cpp's own server (llama-cpp-python's `llama_cpp.server`, its chat template read from the
GGUF; the forget patch applied on the base GGUF for `--variant lora`). ONNX and Hugging Face run in a small
FastAPI app of our own over the runner every format has (export/runtime.py, through export/chat.py's
ChatSession: the bundle's tokenizer and chat template, one request at a time: a runner has one KV cache).
Heavy modules are imported only when a server starts, so `serve_commands` is light for the studio."""
from __future__ import annotations

import errno
import socket
from pathlib import Path

from core.errors import UnlearnError, require

from .formats import formats

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
SERVER_EXTRA = "llama-cpp-python[server]==0.3.36"   # fastapi, uvicorn, sse-starlette, starlette-context, ...


def serve_commands(bundle: str | Path, manifest: dict) -> list[str]:
    """One `unlearn serve` command per servable format of a bundle (what the studio's export tab shows)."""
    present = [fmt.name for fmt in formats() if any(fmt.owns(name) for name in manifest.get("artifacts", {}))]
    return [f"unlearn serve {bundle} --format {name} --port {DEFAULT_PORT}" for name in present]


def check_port(host: str, port: int) -> None:
    """Refuse a port that is taken (or a host that is not this machine's) before any model loads."""
    require(0 < port < 65536, f"--port {port} is not a port number", "choose a port between 1024 and 65535")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as uvicorn binds: a closed server's
        try:                                                           # lingering connections do not count
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UnlearnError(f"port {port} on {host} is in use", f"pass --port with a free port (e.g. "
                                   f"--port {port + 1}), or stop what listens on {port}") from None
            raise UnlearnError(f"cannot listen on {host}:{port}: {exc.strerror}",
                               "pass --host 127.0.0.1 (this machine) or an address of one of its interfaces") from None


def serve(bundle: str | Path, fmt: str, variant: str | None = None, host: str = DEFAULT_HOST,
          port: int = DEFAULT_PORT, log=print) -> None:
    """Serve one artifact of a bundle until Ctrl-C / SIGTERM."""
    from .bundle import read_manifest
    from .chat import pick_artifact

    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    artifact = pick_artifact(manifest, fmt, variant)
    check_port(host, port)
    _require_server_packages(fmt)
    if artifact.startswith("gguf"):
        app = llama_cpp_app(bundle, artifact, manifest["artifacts"][artifact], host, port)
    else:
        from .chat import ChatSession
        from .openai_server import openai_app

        app = openai_app(ChatSession(bundle, fmt, variant), artifact)
    log(f"serving {artifact} of {bundle} at http://{host}:{port}/v1 (OpenAI-compatible chat completions; "
        "Ctrl-C stops)")
    _run(app, host, port)
    log("server stopped")


def _require_server_packages(fmt: str) -> None:
    import importlib.util

    needed = ("fastapi", "uvicorn") + (("sse_starlette", "starlette_context", "pydantic_settings")
                                       if fmt == "gguf" else ())
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    require(not missing, f"unlearn serve --format {fmt} needs {', '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed", f'run: pip install "{SERVER_EXTRA}"')


def _run(app, host: str, port: int) -> None:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    try:
        server.run()    # uvicorn turns SIGINT/SIGTERM into a graceful shutdown...
    except KeyboardInterrupt:
        pass            # ...and raises the signal again once it is done: stopping is the normal end here
    require(server.started, f"the server could not start on {host}:{port}",
            f"pass --port with a free port (e.g. --port {port + 1})")


def llama_cpp_app(bundle: Path, artifact: str, entry: dict, host: str, port: int):
    """llama.cpp's OpenAI-compatible server (llama-cpp-python) over one GGUF of the bundle."""
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    from .openai_server import check_requests_first

    from .runtime import default_threads

    lora = {"model": str(bundle / entry["base"]), "lora_path": str(bundle / entry["path"])} if "base" in entry \
        else {"model": str(bundle / entry["path"])}
    model = ModelSettings(**lora, model_alias=artifact, n_ctx=0, n_threads=default_threads(),   # n_ctx 0: the model's
                          n_threads_batch=default_threads(), flash_attn=True, verbose=False)
    app = create_app(server_settings=ServerSettings(host=host, port=port), model_settings=[model])
    check_requests_first(app)
    return app
