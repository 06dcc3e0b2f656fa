"""Retake the README's screenshots: the studio showing an existing run (its curves, and one probe).

    .venv/bin/python scripts/screenshots.py runs/demo-check "What is the full name of the author born in Kuwait City, Kuwait on 08/09/1956?"
"""
import socket
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from studio.app import build_app, create_studio  # noqa: E402

run_dir, question = Path(sys.argv[1]).resolve(), sys.argv[2]
studio = create_studio(run_dir.parent, shared=True, device="cpu")
app = build_app(studio)
app.queue()
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
out = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
with sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"http://127.0.0.1:{port}/")
    page.get_by_role("tab", name="Runs").click()
    page.locator("#runs-table").get_by_text(run_dir.name).first.wait_for()  # the session is set up
    page.locator("#run-code textarea").fill(run_dir.name)
    page.get_by_role("button", name="Open", exact=True).click()
    page.get_by_text("opened").first.wait_for()
    page.get_by_role("tab", name="2 · Train").click()
    page.locator("#nll-plot canvas").wait_for()
    page.wait_for_timeout(3000)   # let Vega finish drawing
    page.screenshot(path=str(out / "train.png"), full_page=True)
    page.get_by_role("tab", name="3 · Probe").click()
    page.locator("#probe-prompt textarea").fill(question)
    page.locator("#probe-ask").click()
    page.wait_for_function("() => document.querySelector('#probe-unlearned textarea').value.length > 0",
                           timeout=300_000)
    page.screenshot(path=str(out / "probe.png"), full_page=False)
    browser.close()
app.close()
print("wrote", out / "train.png", out / "probe.png")
