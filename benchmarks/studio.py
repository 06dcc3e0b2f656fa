"""Studio responsiveness: page load time, and the p95 latency of the status/curve poll while a training
run keeps the same machine busy. Goal: poll p95 <= 150 ms.

    .venv/bin/python benchmarks/studio.py                # trains the bundled model while polling
    .venv/bin/python benchmarks/studio.py --model-dir DIR --polls 200

Each poll is the page's own timer event (`/poll`: read status.json and metrics.jsonl, build both plots'
frames, tail the log), called through gradio_client over HTTP like the browser does.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def page_load_seconds(url: str) -> dict:
    """Time to first byte of the page, and time until a real browser shows the studio's title."""
    import urllib.request

    from playwright.sync_api import sync_playwright

    start = time.perf_counter()
    urllib.request.urlopen(url, timeout=30).read()
    http = time.perf_counter() - start
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page()
        start = time.perf_counter()
        page.goto(url)
        page.locator("#upload-forget").wait_for()   # the first tab is usable
        browser_load = time.perf_counter() - start
        browser.close()
    return {"http_seconds": round(http, 3), "browser_seconds": round(browser_load, 3)}


def wait_for_steps(studio, name: str, steps: int, timeout: float = 600):
    """The studio's run `name` once it has done `steps` optimizer steps (its subprocess makes the folder)."""
    from core.runs import RunDir, RunState

    deadline = time.time() + timeout
    while time.time() < deadline:
        found = next(studio.workspace.root.glob(f"studio/*/runs/{name}"), None)
        if found is not None:
            run = RunDir(found)
            if run.status().get("step", 0) >= steps:
                return run
            if run.status().get("state") == RunState.FAILED:
                raise SystemExit(f"the benchmark's training run failed: {run.status().get('error')}")
        time.sleep(0.5)
    raise SystemExit(f"the benchmark's training run did not reach step {steps} in {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--polls", type=int, default=150)
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between polls")
    parser.add_argument("--model-dir", help="train this local model instead of the bundled one")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="studio-bench-") as runs_dir:   # the stopped run goes with it
        measure(args, runs_dir)


def measure(args: argparse.Namespace, runs_dir: str) -> None:
    from gradio_client import Client

    from studio.app import build_app, create_studio

    studio = create_studio(runs_dir, shared=False, local_models=[args.model_dir] if args.model_dir else [],
                           device="cpu")
    app = build_app(studio)
    app.queue()
    _, url, _ = app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    load = page_load_seconds(url)

    client = Client(url, verbose=False)
    client.predict(None, api_name="/session")
    client.predict(api_name="/example_private")
    model = next(label for label, path in studio.model_choices().items()
                 if path == (str(Path(args.model_dir).resolve()) if args.model_dir else "bundled"))
    client.predict(model, "", "bench", "npo_rt", 10_000, 1e-5, 4, False, None, None, None, 1, 256, 16, 32, 42, 0.1,
                   api_name="/start")
    run = wait_for_steps(studio, "bench", steps=2)   # measure while the trainer is really stepping

    latencies = []
    for _ in range(args.polls):
        start = time.perf_counter()
        client.predict(api_name="/poll")
        latencies.append((time.perf_counter() - start) * 1000)
        time.sleep(args.interval)
    steps_during = run.status().get("step", 0)
    run.request_stop()
    studio.jobs.wait(300)
    app.close()

    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
              f"{__import__('os').cpu_count()} cores", "page_load": load, "polls": len(latencies),
              "poll_ms": {"p50": round(statistics.median(latencies), 1), "p95": round(percentile(latencies, 95), 1),
                          "max": round(max(latencies), 1)},
              "training_steps_reached": steps_during, "goal_p95_ms": 150}
    met = result["poll_ms"]["p95"] <= 150
    print(f"page load: HTTP {load['http_seconds'] * 1000:.0f} ms, browser until the studio shows "
          f"{load['browser_seconds'] * 1000:.0f} ms")
    print(f"poll while training (n={len(latencies)}): p50 {result['poll_ms']['p50']} ms, "
          f"p95 {result['poll_ms']['p95']} ms, max {result['poll_ms']['max']} ms  "
          f"(goal p95 <= 150 ms: {'met' if met else 'NOT met'})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
