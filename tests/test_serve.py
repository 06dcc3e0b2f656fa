"""`unlearn serve`: each format of a real bundle served on loopback and used through the real `openai` client:
a chat completion that is the artifact's own greedy answer, the same answer streamed, a bad request answered
with an OpenAI error body, and the server stopped cleanly by a signal; a port in use is one error and a fix."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import free_port, run_unlearn
from test_export import data_files, make_run, tiny64_dir  # noqa: F401  (module fixtures reused here)

openai = pytest.importorskip("openai")
QUESTION = [{"role": "user", "content": "Who wrote book number 1?"}]


@pytest.fixture(scope="module")
def bundle(tiny64_dir, data_files, tmp_path_factory):  # noqa: F811
    from export.bundle import export_run

    root = tmp_path_factory.mktemp("serve")
    run = make_run(tiny64_dir, data_files, root / "run", lora=False, steps=1)
    export_run(run, root / "bundle", formats=("hf", "gguf", "onnx"), gguf_quants=("f16",),
               onnx_precisions=("fp32",), parity_check=False, log=lambda message: None)
    return root / "bundle"


def start_server(bundle, fmt: str, port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "unlearn", "serve", str(bundle), "--format", fmt,
                                "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise AssertionError("the server did not start in 180 s")


def expected_answer(bundle, fmt: str, max_tokens: int) -> str:
    from export.chat import ChatSession

    session = ChatSession(bundle, fmt)
    try:
        return "".join(session.answer(QUESTION, max_tokens))
    finally:
        session.close()


@pytest.mark.parametrize("fmt", ["gguf", "onnx", "hf"])
def test_the_openai_client_chats_streams_gets_errors_and_the_server_stops(bundle, fmt):
    port = free_port()
    process = start_server(bundle, fmt, port)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="not-needed", max_retries=0)
        whole = client.chat.completions.create(model=fmt, messages=QUESTION, max_tokens=8, temperature=0)
        text = whole.choices[0].message.content
        assert text and text == expected_answer(bundle, fmt, 8)   # the artifact's own greedy answer
        assert whole.choices[0].finish_reason in ("stop", "length") and whole.usage.completion_tokens > 0
        chunks = list(client.chat.completions.create(model=fmt, messages=QUESTION, max_tokens=8, temperature=0,
                                                     stream=True))
        assert len(chunks) > 2 and "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
        with pytest.raises(openai.APIStatusError) as bad:
            client.chat.completions.create(model=fmt, messages=[{"role": "wizard", "content": "hi"}], max_tokens=4)
        assert 400 <= bad.value.status_code < 500 and "role" in str(bad.value.body).lower()
        assert client.chat.completions.create(model=fmt, messages=QUESTION, max_tokens=8,
                                              temperature=0).choices[0].message.content == text   # still serving
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=60)[0]
    assert process.returncode == 0, output
    assert "server stopped" in output and "Traceback" not in output
    with socket.socket() as probe:     # nothing listens there any more (closed connections may linger)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def test_a_port_in_use_is_one_error_and_a_fix(bundle):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_unlearn("serve", bundle, "--format", "onnx", "--port", port)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: port {port} on 127.0.0.1 is in use", lines[1]] and lines[1].startswith("  fix: pass --port")


def test_a_bad_request_body_is_named_field_by_field():
    from export.openai_server import BadRequest, parse_request

    assert parse_request({"messages": QUESTION})["max_tokens"] == 256
    for body, field in (({"messages": []}, "messages"), ({"messages": QUESTION, "max_tokens": 0}, "max_tokens"),
                        ({"messages": QUESTION, "temperature": 9}, "temperature"),
                        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
                        ({"messages": QUESTION, "n": 2}, "n")):
        with pytest.raises(BadRequest) as refused:
            parse_request(body)
        assert refused.value.param == field


def test_serve_commands_name_each_format_of_the_bundle_in_the_studio_too(bundle):
    from export.bundle import read_manifest
    from export.serve import serve_commands
    from studio.tabs.export import serve_note

    commands = [f"unlearn serve {bundle} --format {fmt} --port 8000" for fmt in ("hf", "gguf", "onnx")]
    assert serve_commands(bundle, read_manifest(bundle)) == commands
    assert "\n".join(commands) in serve_note(bundle, read_manifest(bundle))
