"""The studio in a real browser (Playwright driving Debian's chromium): load, upload, train a tiny model,
watch the curve grow, stop, probe, and bad input; screenshots are saved for inspection."""
import json
import os
import re
import shutil
import time

import pytest

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = os.environ.get("STUDIO_SCREENSHOTS")  # a folder to keep the screenshots in (optional)


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail("chromium is not installed: apt-get install chromium (.ci/run does it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # The flags keep Chromium from reaching for the network, which this machine does not have.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        yield browser
        browser.close()


@pytest.fixture()
def page(browser, studio_server, tmp_path):
    _, url = studio_server
    context = browser.new_context(viewport={"width": 1300, "height": 1000})
    page = context.new_page()
    page.goto(url)
    page.get_by_text("Unlearning Studio").first.wait_for()
    yield page
    context.close()


def shot(page, tmp_path, name):
    folder = SCREENSHOTS or tmp_path
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}.png")
    page.screenshot(path=path, full_page=True)
    assert os.path.getsize(path) > 10_000
    return path


# The forget/retain plot is a canvas: its lines are there when enough pixels carry a colour (axes, grid
# and text are grey). A chart built before its data drew the axes with invisible lines, which this catches.
CURVES_DRAWN = """() => {
    const canvas = document.querySelector('#nll-plot canvas');
    if (!canvas || canvas.width < 100) return false;
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let coloured = 0;
    for (let i = 0; i < pixels.length; i += 4) {
        const [r, g, b, a] = [pixels[i], pixels[i + 1], pixels[i + 2], pixels[i + 3]];
        if (a > 128 && Math.max(r, g, b) - Math.min(r, g, b) > 60) coloured++;
    }
    return coloured > 200;
}"""


def status_step(page) -> int:
    match = re.search(r"step (\d+) /", page.locator("#train-status").inner_text())
    return int(match.group(1)) if match else 0


def test_upload_train_watch_stop_probe(page, qa_files, tmp_path):
    shot(page, tmp_path, "1-data")
    page.locator("#upload-forget input[type=file]").set_input_files(str(qa_files["forget"]))
    page.get_by_text("8 question/answer examples").wait_for(timeout=90_000)
    page.locator("#upload-retain input[type=file]").set_input_files(str(qa_files["retain"]))
    page.get_by_text("16 question/answer examples").wait_for(timeout=90_000)
    assert page.get_by_text("Zorblat Quenfeather").count() > 0           # the preview table shows the data
    shot(page, tmp_path, "2-data-loaded")

    page.get_by_role("tab", name="2 · Train").click()
    page.get_by_label("Model").click()
    page.get_by_role("option", name="local — tiny").click()
    page.locator("#max-steps input").fill("400")
    page.locator("#lr input").fill("0.001")
    page.get_by_label("LoRA adapter (faster, smaller; off = full fine-tuning)").uncheck()
    page.locator("#start").click()
    page.wait_for_function("() => /step [1-9]\\d* \\//.test(document.querySelector('#train-status').innerText)",
                           timeout=120_000)
    first = status_step(page)
    page.wait_for_function(f"() => {{ const m = document.querySelector('#train-status').innerText"
                           f".match(/step (\\d+) \\//); return m && +m[1] > {first + 2}; }}", timeout=120_000)
    page.wait_for_function(CURVES_DRAWN, timeout=90_000)                 # the curves are drawn
    shot(page, tmp_path, "3-training")

    page.locator("#stop").click()
    page.get_by_text("stopped").first.wait_for(timeout=120_000)
    assert "stopped" in page.locator("#train-status").inner_text()
    shot(page, tmp_path, "4-stopped")

    page.get_by_role("tab", name="3 · Probe").click()
    page.locator("#probe-prompt textarea").fill("Who wrote book number 3?")
    page.locator("#probe-ask").click()
    page.wait_for_function("() => document.querySelector('#probe-unlearned textarea').value.length > 0",
                           timeout=120_000)
    assert page.locator("#probe-original textarea").input_value() != ""
    shot(page, tmp_path, "5-probe")


def test_bad_upload_shows_the_problem_and_the_page_keeps_working(page, tmp_path):
    binary = tmp_path / "forget.txt"
    binary.write_bytes(bytes(range(256)))
    page.locator("#upload-forget input[type=file]").set_input_files(str(binary))
    page.get_by_text("is binary, not text").first.wait_for(timeout=90_000)
    shot(page, tmp_path, "6-bad-upload")
    page.get_by_role("button", name="Example: private data (Elara Voss)").click()
    page.get_by_text("8 question/answer examples").wait_for(timeout=90_000)


def test_empty_tables_name_their_columns_and_the_command_box_says_what_comes(page):
    """Before any data or run, a table showed gradio's placeholder headers 1, 2, 3."""
    header = page.locator("#preview-table th").first
    header.wait_for(timeout=30_000)
    assert "answer / text" in page.locator("#preview-table").inner_text()
    page.get_by_role("tab", name="2 · Train").click()
    assert "appears here" in page.locator("#train-command").inner_text()
    for tab, table, column in (("Evaluate", "#evaluate-table", "unlearned"), ("Audit", "#audit-table", "largest recovery"),
                               ("Export", "#parity-table", "artifact")):
        page.get_by_role("tab", name=tab).click()
        page.locator(f"{table} th").first.wait_for(timeout=30_000)
        assert column in page.locator(table).inner_text(), tab


def test_nonsense_settings_are_explained(page, tmp_path):
    page.get_by_role("button", name="Example: private data (Elara Voss)").click()
    page.get_by_text("8 question/answer examples").wait_for(timeout=90_000)
    page.get_by_role("tab", name="2 · Train").click()
    page.locator("#lr input").fill("-1")
    page.locator("#start").click()
    page.get_by_text("learning rate must be positive").first.wait_for(timeout=90_000)
    shot(page, tmp_path, "7-bad-setting")


def test_advanced_settings_follow_the_method(page):
    page.get_by_role("tab", name="2 · Train").click()
    page.get_by_text("Advanced settings").click()
    weight = page.locator("#retain-weight input")
    weight.wait_for(timeout=30_000)
    from studio.tabs.train import METHOD_DEFAULTS

    demo_weight = METHOD_DEFAULTS["npo_rt"]["retain_weight"]
    assert demo_weight != 1 and weight.input_value() == f"{demo_weight:g}"   # the studio's, not the paper's 1
    page.get_by_label("Method").click()
    page.get_by_role("option", name="npo", exact=True).click()
    page.locator("#retain-weight").wait_for(state="hidden", timeout=30_000)   # NPO has no retain term
    assert page.locator("#beta input").is_visible()
    # the 4-bit switch is any method's: off by default, against q4_0 unless the user picks q4_k_m
    assert page.locator("#quant-aware input").input_value() == "0"
    page.locator("#quant-aware-format input").click()
    assert page.get_by_role("option", name="both: q4_0,q4_k_m", exact=True).is_visible()   # a model shipped in both
    page.get_by_role("option", name="q4_k_m", exact=True).click()
    assert page.locator("#quant-aware-format input").input_value() == "q4_k_m"


def test_memory_estimate_and_method_help_follow_the_form(page):
    """The Train tab says what a run will need before Start (unlearn plan) and which methods are built to
    survive relearning."""
    page.get_by_role("tab", name="2 · Train").click()
    estimate = page.locator("#memory-estimate")
    page.wait_for_function("() => /Memory estimate: about/.test(document.querySelector('#memory-estimate').innerText)",
                           timeout=120_000)
    with_lora = float(re.search(r"about ([\d.]+) GiB", estimate.inner_text()).group(1))
    page.get_by_label("LoRA adapter (faster, smaller; off = full fine-tuning)").uncheck()
    page.wait_for_function(f"() => {{ const m = document.querySelector('#memory-estimate').innerText"
                           f".match(/about ([\\d.]+) GiB/); return m && parseFloat(m[1]) > {with_lora}; }}",
                           timeout=60_000)   # full fine-tuning: gradients and AdamW moments of every weight
    assert "Not built to survive relearning" in page.get_by_text("Not built to survive").first.inner_text()
    page.get_by_label("Method").click()
    page.get_by_role("option", name="npo_sam", exact=True).click()
    page.get_by_text("Built to survive relearning").first.wait_for(timeout=30_000)   # in bold, then how and its cost
    page.get_by_text("flattens the forget loss around the weights (SAM); 1.5-1.6x an NPO+RT step (measured)").first.wait_for()


@pytest.fixture()
def finished_run_code(studio_server, tiny_config):
    """A finished run placed in another session's folder: this page opens it by its share code."""
    from dataclasses import replace

    from core.trainer import train

    studio, _ = studio_server
    key = f"studio/{'ab' * 16}/runs/reopen-me"
    train(replace(tiny_config, out=str(studio.workspace.root / key), max_steps=4, overwrite=True), show_progress=False,
          log=lambda message: None)
    return key


def test_reopened_run_draws_its_curves_in_the_train_tab(page, finished_run_code, tmp_path):
    page.get_by_role("tab", name="2 · Train").click()      # the plots exist (empty) before the run is opened
    page.get_by_role("tab", name="Runs").click()
    page.locator("#run-code textarea, #run-code input").first.fill(finished_run_code)
    page.get_by_role("button", name="Open", exact=True).click()
    page.get_by_text("opened").first.wait_for(timeout=90_000)
    page.get_by_role("tab", name="2 · Train").click()
    page.wait_for_function(CURVES_DRAWN, timeout=90_000)
    assert "finished" in page.locator("#train-status").inner_text()
    assert "unlearn train" in page.locator("#train-command").inner_text()   # how it was made
    shot(page, tmp_path, "8-reopened-run")


def test_forget_and_retain_dropped_together_while_the_page_loads_are_both_kept(page, qa_files, studio_server,
                                                                             monkeypatch):
    """Two uploads fired together once lost one of the two sets (both events read the old selection), and a file
    dropped before the page's load event had given the tab its session was refused ("still loading") and lost.
    The load is slowed here so that the drops land inside it, as on a busy machine."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    studio, url = studio_server
    listed = studio.workspace.visible_runs

    def slowly_listed(*args, **kwargs):
        time.sleep(2)
        return listed(*args, **kwargs)

    monkeypatch.setattr(studio.workspace, "visible_runs", slowly_listed)
    both = ("() => { const t = document.querySelector('#data-status').innerText;"
            " return t.includes('forget') && t.includes('retain'); }")
    for attempt in range(2):
        page.goto(url)
        page.get_by_text("Unlearning Studio").first.wait_for()
        page.locator("#upload-forget input[type=file]").set_input_files(str(qa_files["forget"]))
        page.locator("#upload-retain input[type=file]").set_input_files(str(qa_files["retain"]))
        try:
            page.wait_for_function(both, timeout=60_000)
        except PlaywrightTimeout:
            status = page.locator("#data-status").inner_text()
            pytest.fail(f"attempt {attempt}: a set was lost; the status says {status!r}")
        text = page.locator("#data-status").inner_text()
        assert "8 question/answer examples" in text and "16 question/answer examples" in text, text


def test_audit_tab_audits_a_run_in_the_background_and_keeps_it_after_a_reload(page, finished_run_code, tmp_path,
                                                                              studio_server):
    from studio.tabs.audit import REPEATS

    page.get_by_role("tab", name="Runs").click()
    page.locator("#run-code textarea, #run-code input").first.fill(finished_run_code)
    page.get_by_role("button", name="Open", exact=True).click()
    page.get_by_text("opened").first.wait_for(timeout=90_000)
    page.get_by_role("tab", name="Audit").click()
    for attack in ("relearn", "benign"):          # keep the quick one: rephrase (no fine-tuning)
        page.locator("#audit-attacks").get_by_label(attack).uncheck()
    every_rate = next(label for label, value in REPEATS.items() if value == "all")   # not the default
    page.locator("#audit-seeds-at").get_by_label(every_rate).check()
    page.locator("#audit-start").click()
    page.wait_for_function("() => document.querySelector('#audit-status').innerText.includes('audit finished')",
                           timeout=180_000)
    assert "overall" in page.locator("#audit-status").inner_text()
    assert page.locator("#audit-table").get_by_text("rephrase: plain").count() > 0
    report = json.loads((studio_server[0].workspace.root / finished_run_code / "audit" / "audit.json").read_text())
    assert report["seeds_at"] == "all"             # the radio reached the audit
    page.wait_for_function("() => document.querySelector('#audit-chart canvas, #audit-chart svg .mark-rect')",
                           timeout=30_000)         # the recovery bars are drawn
    shot(page, tmp_path, "9-audit")
    page.reload()                                  # the audit lives in the run folder, not in the page
    page.get_by_text("Unlearning Studio").first.wait_for()
    page.get_by_role("tab", name="Runs").click()   # (a run opened by its code is not this session's own)
    page.locator("#run-code textarea, #run-code input").first.fill(finished_run_code)
    page.get_by_role("button", name="Open", exact=True).click()
    page.get_by_text("opened").first.wait_for(timeout=90_000)
    page.get_by_role("tab", name="Audit").click()
    page.wait_for_function("() => document.querySelector('#audit-status').innerText.includes('audit finished')",
                           timeout=60_000)
