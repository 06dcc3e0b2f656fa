"""The studio's events through gradio_client, on a tiny model: data -> train -> curves -> stop -> resume
-> probe -> leak check, plus bad input through the UI. A real server on a free local port."""
import json
import os
import time

import pytest
from gradio_client import Client

from core.runs import RunDir

pytestmark = pytest.mark.studio
TINY = "local — tiny"


def new_client(url: str) -> Client:
    client = Client(url, verbose=False)
    client.predict(None, api_name="/session")
    return client


def start(client, **overrides):
    from studio.tabs.train import form_names

    form = dict.fromkeys(form_names())   # the method's hyper-parameters blank: its defaults
    form.update(model=TINY, hub_id="", run_name="", method="npo_rt", max_steps=6, lr=1e-3, batch_size=4,
                lora=False, grad_accum=1, max_length=256, lora_r=16, lora_alpha=32, seed=42, warmup_ratio=0.1,
                quant_aware=0, quant_aware_format="q4_0")
    form.update(overrides)
    return client.predict(*form.values(), api_name="/start")


def run_named(studio, name: str) -> RunDir:
    """The run directory the studio created for `name` (its subprocess makes it a moment after Start)."""
    found = []
    assert wait_for(lambda: found.extend(studio.workspace.root.glob(f"studio/*/runs/{name}")) or found)
    return RunDir(found[0])


def chart_rows(plot) -> list[dict]:
    """The data rows of a gr.Plot (Altair) payload as the client receives it; [] for none or a skip."""
    if not isinstance(plot, dict) or not plot.get("plot"):
        return []
    spec = json.loads(plot["plot"])
    return [row for rows in spec.get("datasets", {}).values() for row in rows]


def wait_for(predicate, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_upload_train_stop_resume_probe(studio_server, qa_files):
    studio, url = studio_server
    client = new_client(url)
    from gradio_client import handle_file

    _, status = client.predict(handle_file(str(qa_files["forget"])), api_name="/upload_forget")
    assert "8 question/answer examples" in status
    _, status = client.predict(handle_file(str(qa_files["retain"])), api_name="/upload_retain")
    assert "retain" in status and "16 question/answer" in status

    status, command = start(client, run_name="first", max_steps=400)
    assert "started first" in status and command.startswith("unlearn train")
    assert str(studio.workspace.root) not in command and "RUNS/studio/" in command  # no server paths shown
    run = run_named(studio, "first")
    assert wait_for(lambda: run.status().get("step", 0) >= 3)
    # training runs at a lower CPU priority than the page's server, so polls stay fast
    expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
    assert os.getpriority(os.PRIO_PROCESS, studio.jobs.busy().process.pid) == expected

    state, losses, nlls, log, _, command = client.predict(api_name="/poll")
    assert "first" in state and "running" in state and "--max-steps 400" in command
    assert "forget: 8 examples" in log and str(studio.workspace.root) not in log
    assert {"loss", "loss_forget_npo", "loss_retain_nll"} <= {row["series"] for row in chart_rows(losses)}
    first_points = len(chart_rows(nlls))
    assert first_points >= 2
    # the curve grows (a poll sends the plots only when the metrics changed since the last one)
    assert wait_for(lambda: len(chart_rows(client.predict(api_name="/poll")[2])) > first_points)

    assert "stopping" in client.predict(api_name="/stop")
    assert wait_for(lambda: run.status().get("state") == "stopped")
    stopped_at = run.status()["step"]
    assert run.latest_checkpoint() is not None

    # probing works on the stopped run (from its checkpoint)
    original, unlearned = client.predict("Who wrote book number 3?", False, api_name="/probe")
    assert isinstance(original, str) and isinstance(unlearned, str)
    score = client.predict("Who wrote book number 3?", "Book 3 was written by Zorblat Quenfeather.",
                           api_name="/score_answer")
    assert "→" in score

    assert "resuming" in client.predict(api_name="/resume")
    assert wait_for(lambda: run.status().get("state") == "running" and run.status().get("step", 0) > stopped_at)
    client.predict(api_name="/stop")
    assert wait_for(lambda: run.status().get("state") == "stopped")

    summary, table = client.predict(api_name="/leak_check")
    assert "forget answers still leak" in summary and table["visible"] and len(table["value"]["data"]) == 8


def test_a_finished_run_shows_before_after_and_second_start_is_refused(studio_server, qa_files):
    studio, url = studio_server
    client = new_client(url)
    client.predict(api_name="/example_tofu")
    _, command = start(client, run_name="quick", max_steps=3, quant_aware=1.0, quant_aware_format="q4_0,q4_k_m")
    assert "--quant-aware 1.0 --quant-aware-format q4_0,q4_k_m" in command   # the 4-bit switch reaches the run
    with pytest.raises(Exception, match="already training"):
        start(client, run_name="second", max_steps=3)
    run = run_named(studio, "quick")
    assert wait_for(lambda: run.status().get("state") == "finished", timeout=300)
    *_, summary, _ = client.predict(api_name="/poll")
    assert summary["visible"] is True
    assert [row[0] for row in summary["value"]["data"]] == ["forget_nll", "retain_nll"]
    basis = summary["value"]["data"][0][3]   # what the figures were computed on
    assert basis.startswith("first ") and " retain examples, " in basis and basis.endswith("prompts")
    assert not list(studio.workspace.root.glob("studio/*/runs/second"))   # the refused run left nothing
    assert (run.config()["quant_aware"], run.config()["quant_aware_format"]) == (1.0, "q4_0,q4_k_m")
    logged = run.metrics_path.read_text()
    assert "loss_quant_q4_0_forget_npo" in logged and "loss_quant_q4_k_m_forget_npo" in logged   # both files


def test_sessions_do_not_see_each_others_runs(studio_server):
    studio, url = studio_server
    alice, bob = new_client(url), new_client(url)
    alice.predict(api_name="/example_private")
    start(alice, run_name="alice-run", max_steps=2)
    run = run_named(studio, "alice-run")
    assert wait_for(lambda: run.status().get("state") == "finished", timeout=300)
    alice_runs = [row[0] for row in alice.predict(api_name="/list_runs")["data"]]
    bob_runs = [row[0] for row in bob.predict(api_name="/list_runs")["data"]]
    assert any(r.endswith("alice-run") for r in alice_runs) and not any(r.endswith("alice-run") for r in bob_runs)
    with pytest.raises(Exception, match="not available to this session"):
        bob.predict("studio/../../etc", api_name="/open_run")
    # a share code opens it on purpose
    share = next(r for r in alice_runs if r.endswith("alice-run"))
    assert "opened" in bob.predict(share, api_name="/open_run")
    *_, command = bob.predict(api_name="/poll")   # the reopened run shows the command that made it
    assert command.startswith("unlearn train") and "--max-steps 2" in command and "alice-run" in command


def test_a_click_before_the_page_has_its_session_asks_to_wait(studio_server):
    _, url = studio_server
    early = Client(url, verbose=False)   # no /session call yet: the load event has not run
    for api_name, args in (("/open_run", ("some-run",)), ("/list_runs", ())):
        with pytest.raises(Exception, match="the page is still loading"):
            early.predict(*args, api_name=api_name)


@pytest.mark.parametrize("content,fragment", [(b"", "is empty"), (b"\x00\x01\x02binary", "is binary"),
                                              (b'{"q": 1}\n', "needs question/answer")])
def test_bad_uploads_show_a_message_and_keep_the_page_working(studio_server, tmp_path, content, fragment):
    from gradio_client import handle_file

    _, url = studio_server
    client = new_client(url)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    with pytest.raises(Exception, match=fragment):
        client.predict(handle_file(str(bad)), api_name="/upload_forget")
    _, status = client.predict(api_name="/example_private")   # the page still works
    assert "8 question/answer examples" in status


@pytest.mark.parametrize("overrides,fragment", [({"lr": -1.0}, "learning rate must be positive"),
                                                ({"batch_size": 0}, "batch_size must be at least 1"),
                                                ({"beta": 0.0}, "beta must be > 0"),
                                                ({"run_name": "../escape"}, "not a usable run name"),
                                                ({"quant_aware": -1.0}, "less than minimum value 0")])
def test_nonsense_settings_are_refused_before_anything_starts(studio_server, overrides, fragment):
    studio, url = studio_server
    client = new_client(url)
    client.predict(api_name="/example_private")
    with pytest.raises(Exception, match=fragment):
        start(client, **overrides)
    assert studio.jobs.busy() is None or studio.jobs.busy().run_key.endswith(("quick", "alice-run"))


def test_starting_without_data_says_what_to_do(studio_server):
    _, url = studio_server
    with pytest.raises(Exception, match="no forget set is chosen"):
        start(new_client(url))


def client_with_finished_run(studio_server, name):
    """A page (API client) whose open run, on the example private data, has finished two LoRA steps."""
    studio, url = studio_server
    client = new_client(url)
    client.predict(api_name="/example_private")
    start(client, run_name=name, max_steps=2, lora=True, lr=1e-2)
    run = run_named(studio, name)
    assert wait_for(lambda: run.status().get("state") == "finished", timeout=300)
    return client, run


def test_evaluate_and_export_tabs_on_a_finished_run(studio_server):
    studio, _ = studio_server
    client, run = client_with_finished_run(studio_server, "to-export")

    table, chart = client.predict("quick", 4, 8, api_name="/evaluate")
    assert table["headers"] == ["figure", "original", "unlearned"]
    figures = {row[0] for row in table["data"]}
    assert {"forget Prob.", "retain Prob.", "forget ROUGE-L", "forget fluency"} <= figures
    bars = chart_rows(chart)
    assert {row["model"] for row in bars} == {"original", "unlearned"}
    assert len({(row["figure"], row["model"]) for row in bars}) == len(bars) == 2 * len(table["data"])  # one bar each
    summary = json.loads((run.path / "eval" / "quick" / "summary.json").read_text())
    assert [row[2] for row in table["data"] if row[0] == "forget Prob."] == [round(summary["after"]["forget"]["prob"], 3)]

    progress, warnings, report, files = client.predict(["hf"], [], [], api_name="/export")
    assert "bundle written" in progress and str(studio.workspace.root) not in progress
    assert report["data"] and any(str(name).startswith("hf") for name, *_ in report["data"])
    assert any(path.endswith("manifest.json") for path in files)
    assert (run.path / "export" / "manifest.json").is_file()


def test_zero_gpu_handlers_load_their_models_where_the_call_runs(monkeypatch, tmp_path):
    """Inside spaces.GPU a handler sees CUDA; it must load there, and the cached prober must follow."""
    import torch

    from studio import context, gpu
    from studio.app import create_studio

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu.call_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.call_device() == "cpu"
    loads = []
    monkeypatch.setattr(context, "load_prober", lambda path, device, dtype: loads.append(device) or device)
    studio = create_studio(tmp_path / "runs", shared=False, device="cpu")
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setattr(studio.workspace, "open_run", lambda session, key: RunDir(run))
    assert studio.prober("k", "s", "cuda") == "cuda" and studio.prober("k", "s", "cuda") == "cuda"
    assert studio.prober("k", "s", "cpu") == "cpu"
    assert loads == ["cuda", "cpu"]   # cached per device, reloaded when the device changes


def test_audit_tab_runs_in_the_background_and_shows_the_verdict(studio_server):
    studio, _ = studio_server
    client, run = client_with_finished_run(studio_server, "to-audit")
    assert "audit started" in client.predict(["rephrase"], 2, api_name="/audit")

    def finished():
        status, table, chart = client.predict(api_name="/poll_audit")
        return "audit finished" in status and table["data"]
    assert wait_for(finished, timeout=300)
    status, table, chart = client.predict(api_name="/poll_audit")
    assert "overall" in status and str(studio.workspace.root) not in status
    bars = [row for row in chart_rows(chart) if "attack" in row]   # the bars (the rest: the 0.25 and 0.5 lines)
    assert bars and {row["attack"] for row in bars} == {row[0] for row in table["data"]}
    assert {row[0] for row in table["data"]} >= {"rephrase: plain"}
    assert (run.path / "audit" / "audit.json").is_file()
    with pytest.raises(Exception, match="no attack is chosen"):
        client.predict([], 2, api_name="/audit")


def test_audit_tab_with_a_control_repeats_at_the_best_rate_and_keeps_the_controls_figures(studio_server):
    """Another run of this page as the control, two seeds repeated only at the attacker's best learning rate:
    the report says so, and the control's attacked figures land in the studio's control cache."""
    from studio.tabs.audit import REPEATS, control_cache

    studio, _ = studio_server
    client, control_run = client_with_finished_run(studio_server, "the-control")
    start(client, run_name="audited", max_steps=2, lora=True, lr=1e-2)
    run = run_named(studio, "audited")
    assert wait_for(lambda: run.status().get("state") == "finished", timeout=300)
    control_label = f"run — {studio.workspace.key(control_run.path)}"
    offered = client.predict(api_name="/control_choices")   # what the page does when its open run changes
    assert control_label in [choice[0] for choice in offered["choices"]]
    best_only = next(label for label, value in REPEATS.items() if value == "worst")
    assert "audit started" in client.predict(["relearn"], 2, control_label, 2, best_only, api_name="/audit")
    report_path = run.path / "audit" / "audit.json"
    assert wait_for(report_path.is_file, timeout=600)
    report = json.loads(report_path.read_text())
    assert report["seeds_at"] == "worst" and report["seeds"] == 2
    assert report["control"] == str(control_run.path)
    cached = list(control_cache(studio).rglob("*.json"))
    assert cached, "the control's attacked figures were not kept"
