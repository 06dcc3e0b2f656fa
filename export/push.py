"""`unlearn push BUNDLE REPO_ID [--private]`: upload a bundle (the merged HF weights, GGUF files, Modelfiles,
ONNX folders, manifest, parity report and model card) to a Hugging Face model repository with huggingface_hub.
Every problem a user can fix (not a bundle, a repo id that is not one, no token, offline, a refused token, the
Hub unreachable) is one error with its fix, found before any upload where it can be."""
from __future__ import annotations

from pathlib import Path

from core.errors import UnlearnError, require


def check_repo_id(repo_id: str) -> str:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UnlearnError(f"{repo_id!r} is not a Hugging Face repo id: {str(exc).splitlines()[0]}",
                           "give NAME or ORG/NAME (letters, digits, '-', '_', '.'; at most 96 characters)") from None
    return repo_id


def hub_token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    require(bool(token), "pushing to the Hugging Face Hub needs a token, and none is set",
            "run `hf auth login`, or set HF_TOKEN to a token with write access")
    return token


def check_online() -> None:
    from huggingface_hub import constants

    require(not constants.HF_HUB_OFFLINE, "HF_HUB_OFFLINE is set: the Hub cannot be reached",
            "unset HF_HUB_OFFLINE (and connect to the internet) to push")


def push(bundle: str | Path, repo_id: str, private: bool = False, log=print) -> str:
    """Upload the bundle to `repo_id` (created if absent); returns the repository's URL."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    from .bundle import read_manifest

    bundle = Path(bundle)
    read_manifest(bundle)
    check_repo_id(repo_id)
    check_online()
    api = HfApi(token=hub_token())
    log(f"pushing {bundle} to {repo_id} on {constants.ENDPOINT}")
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=url.repo_id, folder_path=bundle, repo_type="model",
                          commit_message="Upload an unlearned model bundle (unlearn push)")
    except HfHubHTTPError as exc:
        raise _http_failure(exc, repo_id) from None
    except _transport_errors() as exc:
        raise UnlearnError(f"cannot reach the Hugging Face Hub at {constants.ENDPOINT}: {exc}",
                           "connect to the internet (or point HF_ENDPOINT at a reachable Hub) and push again") from None
    log(f"pushed: {url}")
    return str(url)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """What a connection that fails raises: huggingface_hub 2 talks through httpx2, earlier ones httpx."""
    import importlib

    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def _http_failure(exc, repo_id: str) -> UnlearnError:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    first = str(exc).splitlines()[0]
    if status == 401:
        return UnlearnError(f"the Hub refused the token ({first})", "run `hf auth login` with a valid token")
    if status == 403:
        return UnlearnError(f"the token may not write to {repo_id} ({first})",
                            "use a token with write access to that namespace, or push to your own NAME")
    return UnlearnError(f"the Hub answered {status}: {first}", "check the repo id and try again")
