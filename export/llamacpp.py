"""llama.cpp's own conversion scripts, taken from the llama-cpp-python source distribution.

`convert_hf_to_gguf.py`, `convert_lora_to_gguf.py`, their `conversion/` package and `gguf-py` are not in
the llama-cpp-python wheel, only in its sdist. On first use the sdist of the *installed* version is
downloaded once with pip (or read from $UNLEARN_LLAMA_CPP_SDIST) and those files are extracted into
`cache_home()/llama.cpp-<version>/`, so the converter always matches the runtime that loads its output.
The scripts run as subprocesses: they put their own gguf-py first on sys.path, which must not replace
the `gguf` package imported in this process.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from core.errors import UnlearnError, require
from core.models import cache_home

# What the conversion scripts need from the sdist's vendor/llama.cpp/ (about 3 MB of the 77 MB archive).
NEEDED = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
SDIST_ENV = "UNLEARN_LLAMA_CPP_SDIST"


def llama_cpp_version() -> str:
    try:
        import llama_cpp
    except ImportError:
        raise UnlearnError("GGUF export needs llama-cpp-python, which is not installed",
                           'run: CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python==0.3.36 '
                           "(a source build: about 5 minutes)") from None
    return llama_cpp.__version__


def tools_dir() -> Path:
    """The extracted llama.cpp conversion scripts for the installed llama-cpp-python (fetched once)."""
    version = llama_cpp_version()
    target = cache_home() / f"llama.cpp-{version}"
    if (target / "convert_hf_to_gguf.py").is_file():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # the studio and the CLI may both ask at once
        if not (target / "convert_hf_to_gguf.py").is_file():
            _extract_tools(_sdist(version), target)
    return target


def _sdist(version: str) -> Path:
    given = os.environ.get(SDIST_ENV)
    if given:
        require(Path(given).is_file(), f"{SDIST_ENV}={given} is not a file",
                f"point it at llama_cpp_python-{version}.tar.gz or unset it")
        return Path(given)
    download = Path(tempfile.mkdtemp(prefix="llama-cpp-sdist-"))
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                             f"llama-cpp-python=={version}", "-d", str(download)],
                            capture_output=True, text=True)
    archives = list(download.glob("*.tar.gz"))
    if result.returncode != 0 or not archives:
        raise UnlearnError(f"could not download the llama-cpp-python {version} source distribution, which holds "
                           f"llama.cpp's GGUF converter: {result.stderr.strip().splitlines()[-1:] or 'no archive'}",
                           f"connect to PyPI once, or download llama_cpp_python-{version}.tar.gz elsewhere and "
                           f"set {SDIST_ENV} to its path")
    return archives[0]


def _extract_tools(archive: Path, target: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=".llama.cpp-", dir=target.parent))
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if _wanted(m.name)]
            require(members, f"{archive} holds no vendor/llama.cpp/convert_hf_to_gguf.py",
                    "use the llama-cpp-python source distribution (.tar.gz) of the installed version")
            for member in members:
                member.name = member.name.split("/vendor/llama.cpp/", 1)[1]
            tar.extractall(staging, members=members, filter="data")
        os.replace(staging, target)  # whole or absent: a crash mid-extraction leaves nothing half-done
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _wanted(name: str) -> bool:
    if "/vendor/llama.cpp/" not in name:
        return False
    inner = name.split("/vendor/llama.cpp/", 1)[1]
    return any(inner == n or (n.endswith("/") and inner.startswith(n)) for n in NEEDED)


def supported_architectures() -> set[str]:
    """Hugging Face architectures llama.cpp's converter handles, read from its registry without importing it."""
    source = (tools_dir() / "conversion" / "__init__.py").read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "TEXT_MODEL_MAP":
            return set(ast.literal_eval(node.value))
    raise UnlearnError("could not read the architecture list of llama.cpp's converter",
                       f"delete {tools_dir()} so that it is extracted again")


def run_script(script: str, args: list[str]) -> None:
    """Run one of llama.cpp's conversion scripts; its log goes into the error if it fails."""
    tools = tools_dir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tools), str(tools / "gguf-py")])}
    env.pop("NO_LOCAL_GGUF", None)
    launcher = Path(__file__).with_name("_llamacpp_script.py")
    result = subprocess.run([sys.executable, str(launcher), str(tools / script), *args], capture_output=True,
                            text=True, env=env, cwd=tools)
    if result.returncode != 0:
        reason, fix = converter_failure(result.stderr or result.stdout, tools)
        raise UnlearnError(f"llama.cpp's {script} could not convert this model: {reason}", fix)


# What a converter's last exception means: (pattern, the reason in plain words or None to show the
# exception line itself, the fix that fits it). Stack lines are left out.
FAILURES = (
    (re.compile(r"File not found: .*tokenizer\.model|tokenizer\.model"), None,
     "put the model's tokenizer.model (SentencePiece) beside its config.json"),
    (re.compile(r"KeyError"), None,
     "add the named setting to the model's config.json (the original model's config has it)"),
    # llama.cpp knows a BPE tokenizer by a hash of how it splits a fixed text; a tokenizer it has not
    # been taught (a custom vocabulary, or one paired with another family's pre-tokenizer) cannot convert.
    (re.compile(r"pre-tokenizer was not recognized"),
     "llama.cpp does not know this model's tokenizer (it recognises BPE tokenizers by how they split a fixed text)",
     "export without gguf (--formats hf,onnx); llama.cpp converts the tokenizers published with the models it "
     "supports, so a model with its family's own tokenizer converts"),
    (re.compile(r"not supported|NotImplementedError"), None, "export this run without gguf"),
)


def converter_failure(output: str, cwd: Path | None = None) -> tuple[str, str]:
    """(reason, fix) from a failed converter's output: its final exception line, in plain words where known;
    a missing file is looked up to say what is really missing (`cwd`: the folder the converter ran in)."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b", line)]
    reason = errors[-1] if errors else (lines[-1] if lines else "no output")
    missing = re.search(r"FileNotFoundError: .*?'([^']+)'", reason)
    if missing and "tokenizer.model" not in reason:
        return missing_file(Path(missing.group(1)), cwd)
    for pattern, plain, fix in FAILURES:
        if pattern.search(reason):
            return plain or reason, fix
    return reason, ("that is llama.cpp's converter's own error, above; export the other formats meanwhile "
                    "(--formats hf,onnx)")


def missing_file(path: Path, cwd: Path | None) -> tuple[str, str]:
    """What a converter's FileNotFoundError really means: a folder that is not there (from where it ran), or a
    file missing from a folder that is, with what the folder holds."""
    where = (cwd / path) if cwd and not path.is_absolute() else path
    if not where.parent.is_dir():
        seen_from = f" (a relative path, looked up from {cwd})" if cwd and not path.is_absolute() else ""
        return (f"the folder {path.parent} does not exist{seen_from}",
                "give unlearn export the run by an absolute path, or run it from the run's parent folder")
    held = ", ".join(sorted(p.name for p in where.parent.iterdir())[:8]) or "nothing"
    return (f"{where.parent} has no {path.name} (it holds: {held})",
            f"put {path.name} into {where.parent}, or export without gguf (--formats hf,onnx)")
