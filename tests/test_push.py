"""`unlearn push` and the Hub-ready card: the card's metadata reads back through huggingface_hub's card tools;
a push goes through huggingface_hub's real HTTP calls to a stub Hub on loopback (HF_ENDPOINT), which receives
every file of the bundle byte for byte; no token, offline, an unreachable Hub and a repo id that is not one are
each one error and a fix, before anything is uploaded."""
from __future__ import annotations

import base64
import json
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import free_port, run_unlearn, write_qa_files
from test_export import make_run


@pytest.fixture(scope="module")
def run_and_bundle(tiny_model_dir, tmp_path_factory):
    from export.bundle import export_run

    root = tmp_path_factory.mktemp("push")
    make_run(tiny_model_dir, write_qa_files(root, 4, 4), root / "run", lora=True, steps=1)
    (root / "run" / "eval" / "quick").mkdir(parents=True)     # an evaluation written into the run
    (root / "run" / "eval" / "quick" / "summary.json").write_text(json.dumps(
        {"after": {"forget": {"rougeL": 0.25, "prob": 0.5}, "retain": {"rougeL": 0.75}}}))
    export_run(root / "run", root / "bundle", formats=("hf",), parity_examples=1, log=lambda message: None)
    return root / "run", root / "bundle"


class StubHub(BaseHTTPRequestHandler):
    """Answers the calls huggingface_hub makes to create a repo and commit files uploaded inline."""
    received: dict[str, bytes] = {}
    calls: list[str] = []
    validated: list[str] = []

    def log_message(self, *args):
        pass

    def _answer(self, payload: dict, status: int = 200):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.calls.append(f"POST {self.path} {self.headers.get('authorization', '')}")
        if self.path == "/api/validate-yaml":   # the Hub checks README.md's metadata before a commit
            self.validated.append(json.loads(body)["content"])
            return self._answer({"errors": [], "warnings": []})
        if self.path == "/api/repos/create":
            request = json.loads(body)
            return self._answer({"url": f"http://{self.headers['Host']}/{request['organization']}/{request['name']}",
                                 "private": request.get("private")})
        if "/preupload/" in self.path:   # every file goes inline in the commit: no LFS round trip
            files = json.loads(body)["files"]
            return self._answer({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                           for f in files]})
        if "/commit/" in self.path:
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.received[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            repo = self.path.split("/api/models/")[1].split("/commit/")[0]
            return self._answer({"commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{'1' * 40}", "commitOid": "1" * 40, "success": True})
        return self._answer({"error": f"stub does not know {self.path}"}, 404)


@pytest.fixture
def stub_hub():
    StubHub.received, StubHub.calls, StubHub.validated = {}, [], []
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), StubHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def hub_env(endpoint: str, token: str | None = "hf_stub_token", tmp_path: Path | None = None) -> dict:
    env = {"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HOME": str(tmp_path / "hf-home") if tmp_path else "/nonexistent-hf-home"}
    if token:
        env["HF_TOKEN"] = token
    return env


def test_the_card_metadata_follows_the_hub_schema(run_and_bundle):
    from huggingface_hub import ModelCard

    run, bundle = run_and_bundle
    card = ModelCard((bundle / "README.md").read_text(encoding="utf-8"))
    data = card.data
    assert "unlearning" in data.tags and "npo_rt" in data.tags and "lora" in data.tags
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
    assert data.base_model is None and data.license == "other"   # a local tiny model: no Hub id to link
    results = {r.metric_type: r for r in data.eval_results}
    summary = json.loads((run / "summary.json").read_text())
    assert results["forget_nll"].metric_value == round(summary["after"]["forget_nll"], 4)
    assert results["forget_nll"].dataset_name == "forget set (forget.jsonl)"
    assert results["quick_forget_rougeL"].metric_value == 0.25 and results["quick_retain_rougeL"].metric_value == 0.75
    parity = json.loads((bundle / "parity.json").read_text())["formats"]["hf"]
    assert results["hf_token_agreement"].metric_value == parity["token_agreement"]
    assert card.data.to_dict()["model-index"][0]["name"].endswith("-unlearned-npo_rt")


def test_a_hub_model_and_hub_datasets_are_named_by_their_ids(run_and_bundle):
    from huggingface_hub import ModelCard

    from export.hubcard import card_data
    from export.source import read_run

    run, bundle = run_and_bundle
    source = read_run(run)
    source = replace(source, config={**source.config, "model": "bundled", "forget": "hf:org/forget-set:main@train",
                                     "retain": "tofu:retain99"})
    audit = {"results": [{"name": "relearn", "verdict": "shallow: it came back", "worst_recovery": 0.8}]}
    data = card_data(source, json.loads((bundle / "manifest.json").read_text()), None, audit)
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and data.license == "apache-2.0"
    assert data.datasets == ["org/forget-set", "locuslab/TOFU"]
    reread = ModelCard(f"---\n{data.to_yaml()}\n---\n").data     # what the Hub's card parser makes of it
    recovery = next(r for r in reread.eval_results if r.metric_type == "audit_relearn_worst_recovery")
    assert recovery.metric_value == 0.8 and recovery.dataset_type == "org/forget-set"


def test_push_uploads_every_file_of_the_bundle_through_the_hub_api(run_and_bundle, stub_hub, tmp_path):
    _, bundle = run_and_bundle
    result = run_unlearn("push", bundle, "me/unlearned-tiny", "--private", env=hub_env(stub_hub, tmp_path=tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"pushed: {stub_hub}/me/unlearned-tiny" in result.stdout
    on_disk = {p.relative_to(bundle).as_posix(): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    assert StubHub.received == on_disk and "hf/model.safetensors" in on_disk and "README.md" in on_disk
    assert StubHub.calls[0] == "POST /api/repos/create Bearer hf_stub_token"
    assert StubHub.validated == [on_disk["README.md"].decode()]     # the card went through the Hub's check


@pytest.mark.parametrize("case, expected, fix", [
    ("no token", "needs a token, and none is set", "hf auth login"),
    ("offline", "HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE"),
    ("bad repo id", "'not a repo' is not a Hugging Face repo id", "ORG/NAME"),
    ("unreachable", "cannot reach the Hugging Face Hub at http://127.0.0.1:", "connect to the internet"),
    ("not a bundle", "is not an export bundle", "unlearn export"),
])
def test_push_refuses_cleanly(run_and_bundle, stub_hub, tmp_path, case, expected, fix):
    _, bundle = run_and_bundle
    env = hub_env(stub_hub, tmp_path=tmp_path)
    repo, target = "me/unlearned-tiny", bundle
    if case == "no token":
        env = hub_env(stub_hub, token=None, tmp_path=tmp_path)
    elif case == "offline":
        env["HF_HUB_OFFLINE"] = "1"
    elif case == "bad repo id":
        repo = "not a repo"
    elif case == "unreachable":
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"   # nothing listens there
    else:
        target = tmp_path
    result = run_unlearn("push", target, repo, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 2 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("error: ") and expected in lines[0] and lines[1].startswith("  fix: ") and fix in lines[1]
    assert StubHub.received == {}
