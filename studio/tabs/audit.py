"""Audit tab: attack a finished run (relearning, benign fine-tuning, quantisation, rephrasing) in the
background and show how much of what it forgot each attack brings back, with the verdict. The audit runs as
a subprocess writing RUN/audit/status.json, so it survives a page reload and can be stopped."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from audit import read_report
from audit.attacks import ATTACKS, attack_names, default_attacks
from audit.attacks.base import is_step_count
from audit.recovery import INCONCLUSIVE_ROBUST, barely_forgotten, verdict_label
from core.errors import require
from core.methods.params import Param
from core.runs import RunDir, RunState

from ..context import Studio, guarded, message, public_text

FIGURE_NAMES = {"nll": "NLL", "prob": "probability", "rougeL": "ROUGE-L"}
NO_CONTROL = "none — judge by the recovery alone"
REPEATS = {   # label -> --seeds-at (audit/attacks/finetune.py SEEDS_AT)
    "only the attacker's best learning rate (fewer fine-tunings)": "worst",
    "every learning rate (slowest, every point has its interval)": "all",
}
PLAIN_VERDICTS = {   # (verdict, judged against a control) -> the verdict in plain words
    ("robust", True): "the forgetting held: after this attack it knows no more than a model that never learned the data",
    ("partial", True): "partly undone: after this attack it knows clearly more than a model that never learned the "
                       "data (a quarter to half of the way back)",
    ("shallow", True): "shallow: after this attack it is more than halfway back to what it knew, far ahead of a "
                       "model that never learned the data",
    ("robust", False): "the forgetting held: this attack brings back less than a quarter of what was forgotten",
    ("partial", False): "partly undone: this attack brings back a quarter to half of what was forgotten",
    ("shallow", False): "shallow: this attack brings back more than half of what was forgotten",
}
BARELY_FORGOTTEN = "barely forgotten to begin with"
OTHER_VERDICTS = {
    "inconclusive": "not sure: the measurement is too noisy to tell (more seeds or samples would narrow it)",
    "undefined": "nothing to judge: unlearning changed none of the figures",
}


def audit_status(run: RunDir) -> tuple[str, dict | None]:
    """(status line, the report when there is one) of a run's audit folder."""
    folder = RunDir(run.audit_dir)   # an audit folder keeps its status.json the way a run does
    report = read_report(run.audit_report_path)
    if not folder.status_path.is_file():
        return "No audit of this run yet.", report
    status = folder.status()
    state = status.get("state")
    if state == RunState.RUNNING:
        return f"auditing: {status.get('message', '')} ({100 * status.get('progress', 0):.0f} %)", report
    if state == RunState.FINISHED and report:
        against = f", against the control {report['control']}" if report.get("control") else ", no control"
        return f"audit finished: overall **{report['overall']}**{against} ({report['wall_seconds']} s)", report
    return f"audit {state}: {status.get('error') or status.get('message', '')}", report


def ticked_attacks() -> list[str]:
    """Ticked when the tab opens: the default attacks but the slow ones (quantize: four exports)."""
    return [name for name in default_attacks() if not ATTACKS[name].slow]


def step_params() -> list[tuple[str, Param]]:
    """(attack, its fine-tuning step count `<attack>_steps`) for every attack that fine-tunes: the tab's one
    steps field sets them all."""
    return [(name, p) for name in attack_names() for p in ATTACKS[name].params if is_step_count(p)]


def step_flags(chosen: list[str], steps: int) -> list[str]:
    """The steps field as flags, for the chosen attacks that fine-tune."""
    flags = dict.fromkeys(p.flag for attack, p in step_params() if attack in chosen)
    return [text for flag in flags for text in (flag, str(steps))]


def step_field():
    declared = step_params()
    label = f"fine-tuning steps ({', '.join(dict.fromkeys(attack for attack, _ in declared))})"
    return gr.Number(max((p.default for _, p in declared), default=30), label=label, precision=0, minimum=1,
                     maximum=500, visible=bool(declared))


def recovery_rows(report: dict) -> list[dict]:
    return [{"attack": r["name"], "figure": FIGURE_NAMES[f], "recovery": v}
            for r in report["results"] for f, v in r["recovery"].items() if v is not None]


def recovery_chart(report: dict | None):
    import altair as alt

    rows = recovery_rows(report) if report else []
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    bars = alt.Chart(frame).mark_bar().encode(
        x=alt.X("attack:N", title=None, sort=None, axis=alt.Axis(labelAngle=-30)), xOffset="figure:N",
        y=alt.Y("recovery:Q", title="recovery (0 forgotten, 1 restored)"), color=alt.Color("figure:N", title=None),
        tooltip=["attack", "figure", alt.Tooltip("recovery:Q", format=".3f")])
    rules = alt.Chart(pd.DataFrame({"y": [0.25, 0.5]})).mark_rule(strokeDash=[4, 4], color="grey").encode(y="y:Q")
    return (bars + rules).properties(title="How much each attack brings back", height=260, width=700)


def control_choices(studio: Studio, session_id: str, run_key: str | None) -> dict[str, str]:
    """label -> the --control spec: none, the studio's models (bundled, the demo base, local folders), and
    every other run this session sees (its final model)."""
    runs = {f"run — {key}": str(studio.workspace.root / key) for key in studio.workspace.visible_runs(session_id)
            if key != run_key}
    return {NO_CONTROL: "", **studio.model_choices(), **runs}


def control_cache(studio: Studio):
    """Where the controls' attacked figures are kept, shared by every session of this studio: auditing
    another run against the same control with the same attacks does not fine-tune the control again. The
    key is the control's weights and the examples, so nothing of one session's data reaches another's page
    unless it audits the same examples itself."""
    return studio.workspace.root / "studio" / "control-cache"


def plain_verdict(result: dict) -> str:
    """The verdict in words a non-researcher reads."""
    level = result["verdict"].split(":")[0]
    against_control = result.get("judged_by") == "residual"
    if barely_forgotten(result) and level in ("shallow", "partial", "inconclusive"):
        return (f"{BARELY_FORGOTTEN}; before any attack it was less than halfway from what it knew to a model that "
                "never learned the data, so the attack had little to undo: unlearn further first")
    words = PLAIN_VERDICTS.get((level, against_control)) or OTHER_VERDICTS.get(level, level)
    if result["verdict"] == INCONCLUSIVE_ROBUST:   # noisy, but below halfway back either way
        words += "; at most partly undone (never more than halfway back)"
    if result.get("at_edge") and level != "shallow":
        words += (f"; but the attack did best at the {result['at_edge']} learning rate tried, so a stronger one "
                  "may exist: add rates further out")
    return words


def _with_interval(values: dict | None, intervals: dict | None, figure: str = "nll") -> str:
    from audit.report import with_interval

    value = with_interval((values or {}).get(figure), (intervals or {}).get(figure))
    return "-" if value is None else (value if isinstance(value, str) else f"{value:.3f}")


def verdict_table(report: dict | None) -> pd.DataFrame:
    """Per attack: the verdict in words, the unlearned model against the control after the attack (forget
    NLL), and the recovery and residual of the NLL with their 95 % intervals."""
    columns = ["attack", "verdict", "in plain words", "largest recovery", "NLL recovery [95 % interval]", "NLL residual [95 % interval]",
               "forget NLL: original", "unlearned, attacked", "control, attacked"]
    if not report:
        return pd.DataFrame(columns=columns)
    rows = []
    for r in report["results"]:
        forget = r["forget"]
        rows.append(dict(zip(columns, [
            r["name"], verdict_label(r["verdict"]), plain_verdict(r),
            "-" if r.get("worst_recovery") is None else round(r["worst_recovery"], 3),
            _with_interval(r.get("recovery"), r.get("recovery_interval")),
            _with_interval(r.get("residual"), r.get("residual_interval")) if "residual" in r else "-",
            round(forget["original"].get("nll", float("nan")), 3), round(forget["attacked"].get("nll", float("nan")), 3),
            round(forget["control_attacked"]["nll"], 3) if "control_attacked" in forget else "-"])))
    return pd.DataFrame(rows, columns=columns)


def create_audit_tab(studio: Studio, session, run_key):
    gr.Markdown("Does the forgetting survive? Each attack tries to bring back what this run forgot; "
                "recovery 0 means still forgotten, 1 fully restored (robust below 0.25, shallow above 0.5).")
    with gr.Row():
        attacks = gr.CheckboxGroup(attack_names(), value=ticked_attacks(), label="Attacks", elem_id="audit-attacks")
        steps = step_field()
    with gr.Row():
        control = gr.Dropdown([NO_CONTROL, *studio.model_choices()], value=NO_CONTROL, elem_id="audit-control",
                              label="Control: a model that never learned the forget data (fine-tuned alike)")
        seeds = gr.Number(1, label="seeds (repeats, for the intervals)", precision=0, minimum=1, maximum=5,
                          elem_id="audit-seeds")
        repeats = gr.Radio(list(REPEATS), value=next(iter(REPEATS)), label="repeat the attack (with seeds > 1) at",
                           elem_id="audit-seeds-at")
    with gr.Row():
        start = gr.Button("Audit this run", variant="primary", elem_id="audit-start")
        stop = gr.Button("Stop", variant="stop", elem_id="audit-stop")
    status = gr.Markdown("No audit yet.", elem_id="audit-status")
    verdicts = gr.Dataframe(verdict_table(None), interactive=False, label="Verdict per attack", elem_id="audit-table")
    chart = gr.Plot(show_label=False, elem_id="audit-chart")
    timer = gr.Timer(2.0)

    @guarded
    def on_start(session_id, key, chosen, fine_tune_steps, control_label, seed_count, repeat_label):
        from audit import check_control

        run = studio.workspace.open_run(session_id, key)
        require(run.status().get("state") == RunState.FINISHED, "this run has not finished",
                "audit a finished run (the Runs tab lists them)")
        require(bool(chosen), "no attack is chosen", "tick at least one attack")
        spec = control_choices(studio, session_id, key).get(control_label, "")
        if spec:
            check_control(run, spec)   # a wrong control is refused here, in the page
        control_flags = ["--control", spec, "--control-cache", str(control_cache(studio))] if spec else []
        seeds_at = REPEATS.get(repeat_label, "worst")
        studio.jobs.start_audit(run, key, ["--attacks", ",".join(chosen), *step_flags(chosen, int(fine_tune_steps)),
                                           *control_flags, "--seeds", str(int(seed_count or 1)),
                                           "--seeds-at", seeds_at, "--device", studio.device],
                                studio.workspace.log_path(key).with_suffix(".audit.log"))
        return message("audit started: it runs in the background; this page follows it", "info")

    @guarded
    def on_stop():
        stopped = studio.jobs.stop_audit()
        return message("stopping the audit (no half report is written)" if stopped else "no audit is running", "info")

    def on_tick(session_id, key):
        if not key:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            run = studio.workspace.open_run(session_id, key)
        except Exception:
            return gr.skip(), gr.skip(), gr.skip()
        text, report = audit_status(run)
        return public_text(text), verdict_table(report), recovery_chart(report)

    def on_run_change(session_id, key):
        return gr.update(choices=list(control_choices(studio, session_id, key)))

    start.click(on_start, [session, run_key, attacks, steps, control, seeds, repeats], status, api_name="audit")
    run_key.change(on_run_change, [session, run_key], control, show_progress="hidden", api_name="control_choices")
    stop.click(on_stop, None, status, api_name="stop_audit")
    timer.tick(on_tick, [session, run_key], [status, verdicts, chart], api_name="poll_audit", show_progress="hidden")
    return {"status": status}
