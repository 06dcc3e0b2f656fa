"""Export a finished unlearning run as a bundle of artifacts, one set per export format (export/formats/:
Hugging Face, GGUF, ONNX, and any format registered beside them), with parity checks.

`export_run(run_dir, out, formats, gguf_quants=..., onnx_precisions=...)` is the Python API the studio
calls; `unlearn export` and `unlearn chat` (export/cli.py) are the command line over it. Importing this
package loads neither torch nor any runtime."""


def export_run(*args, **kwargs):
    from .bundle import export_run as run

    return run(*args, **kwargs)
