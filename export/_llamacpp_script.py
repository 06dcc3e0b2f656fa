"""Run one of llama.cpp's conversion scripts (argv[1], its arguments after it) with its config reading
mended: it reads a model's settings through transformers' AutoConfig, and transformers 5 folds some of
them away under new names (GPT-NeoX's rotary_pct goes into rope_parameters), so every setting config.json
holds is added back where AutoConfig dropped it. Run by export.llamacpp.run_script, in llama.cpp's folder."""
import json
import runpy
import sys
from pathlib import Path

sys.path.pop(0)   # this file's folder: its gguf.py would shadow llama.cpp's gguf package
from conversion import ModelBase  # noqa: E402

_read_through_transformers = ModelBase.load_hparams


def _load_hparams(dir_model, is_mistral_format):
    hparams = _read_through_transformers(dir_model, is_mistral_format)
    written = Path(dir_model) / "config.json"
    if not is_mistral_format and written.is_file():
        for key, value in json.loads(written.read_text(encoding="utf-8")).items():
            hparams.setdefault(key, value)
    return hparams


ModelBase.load_hparams = staticmethod(_load_hparams)
script, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_path(script, run_name="__main__")
