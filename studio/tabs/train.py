"""Train tab: model, method and settings; Start / Stop / Resume; live curves, progress and the log."""
from __future__ import annotations

import shlex
from dataclasses import fields, replace

import gradio as gr

from core.config import UnlearnConfig
from core.errors import UnlearnError, require
from core.ggml_formats import FILE_TYPES
from core.methods import parameter_names, unlearning_methods
from core.models import HUB_PREFIX

from .. import poll
from ..context import Studio, guarded, message, public_text
from ..workspace import default_run_name

# The demo forgets in about a minute on a laptop CPU: LoRA, a learning rate high enough to move a small
# adapter, 40 steps, and the retain term weighted 6 (the NPO paper uses 1) so that the high rate keeps the
# retain answers. Measured on the demo model and the "TOFU authors (demo)" example with
# benchmarks/demo_defaults.py (greedy ROUGE-L recall of the true answers, original -> unlearned, 10 forget /
# 10 retain QA; bf16 on a 2-core AVX512-BF16 CPU, 2026-12-01; docs/benchmarks.md, "The studio's demo run"):
#   lr 3e-4, 60 steps, weight 2: 110 s, forget 0.86 -> 0.36, retain 0.73 -> 0.63 (the defaults until then)
#   lr 6e-4, 30 steps, weight 2:  65 s, forget 0.86 -> 0.26, retain 0.73 -> 0.35 (retain lost with it)
#   lr 4.5e-4, 40 steps, weight 5: 79 s, forget 0.86 -> 0.40, retain 0.73 -> 0.61
#   lr 5e-4, 40 steps, weight 6:  76 s, forget 0.86 -> 0.33, retain 0.73 -> 0.64 (chosen; seed 7: 0.46 / 0.73)
DEFAULTS = {"method": "npo_rt", "max_steps": 40, "lr": 5e-4, "batch_size": 4, "lora": True}
METHOD_DEFAULTS = {"npo_rt": {"retain_weight": 6.0}}   # studio settings that differ from the paper's
SETTINGS = ("model", "hub_id", "run_name", "method", "max_steps", "lr", "batch_size", "lora", "grad_accum",
            "max_length", "lora_r", "lora_alpha", "seed", "warmup_ratio", "quant_aware", "quant_aware_format")
LOSS_TITLE = "Loss terms"
NLL_TITLE = "Forget vs retain NLL (forget should rise, retain stay)"


def tunable() -> list[str]:
    """One advanced field per hyper-parameter name the methods declare (shown for the methods that take it)."""
    return [name for name in parameter_names() if any(name in m.defaults() for m in unlearning_methods().values())]


def form_names() -> list[str]:
    """The Start event's inputs after the session and data, in order (also the API's argument order)."""
    return [*SETTINGS, *tunable()]


def method_help(name: str) -> str:
    method = unlearning_methods()[name]
    params = ", ".join(f"{p.name}={p.default}" for p in method.params)
    lasting = (f"**Built to survive relearning**: {method.resists}. Whether it did on this project's own audit: "
               "docs/results/robust.md." if method.resists else
               "Not built to survive relearning: the audit brought back 62-92 % of what such methods removed after "
               "30 steps of fine-tuning (docs/results/audit.md); audit the result, or pick a method marked as built "
               "to survive it.")
    return f"{method.summary}  \n{lasting}  \n*defaults: {params or 'none'} — {method.paper}*"


def memory_estimate(studio: Studio, choice: str, hub_id: str | None, method: str, lora: bool, batch_size,
                    max_length) -> str:
    """`unlearn plan`'s estimate for the form as it stands: what a run will need before it starts."""
    from core.models import pick_device
    from core.plan import GiB, PlanRequest, plan_memory

    device = pick_device(studio.device).type
    try:
        request = PlanRequest(model=_model_name(studio, choice, hub_id), method=method, lora=bool(lora),
                              batch_size=int(batch_size or 1), max_length=int(max_length or 256),
                              device="cuda" if device == "cuda" else "cpu")
        plan = plan_memory(request)
    except UnlearnError as exc:
        return f"Memory estimate: not available ({exc.problem})"
    except (OSError, ValueError) as exc:   # a hub model whose config cannot be read here
        return f"Memory estimate: not available ({type(exc).__name__}: the model's config could not be read)"
    parts = ", ".join([f"{name} {size / GiB:.2f}" for name, size in plan.parts.items()] +
                      [f"{name} {size * request.batch_size / GiB:.2f}" for name, size in plan.per_example_parts.items()])
    return (f"**Memory estimate: about {plan.total / GiB:.1f} GiB** on this {device} at batch "
            f"{request.batch_size} x {request.max_length} tokens ({parts} GiB); `unlearn plan` shows more.")


def method_fields(name: str) -> tuple:
    """Per hyper-parameter field: shown only when the method takes it, labelled with what it means there,
    blank (= the method's default) unless the studio has its own default for this method."""
    declared = {p.name: p for p in unlearning_methods()[name].params}
    preset = METHOD_DEFAULTS.get(name, {})
    fields_ = []
    for param_name in tunable():
        param = declared.get(param_name)
        label = f"{param_name} (blank = {param.default})" if param else param_name
        info = f"{param.help}; {param.range_text()}; default from {param.source}" if param else None
        fields_.append({"visible": param is not None, "value": preset.get(param_name), "label": label, "info": info})
    return tuple(fields_)


def build_config(studio: Studio, session_id: str, data: dict, form: dict) -> tuple[str, UnlearnConfig]:
    """The UnlearnConfig a form describes, with a fresh run directory inside the session."""
    require("forget" in data, "no forget set is chosen", "upload one in the Data tab, or load an example")
    model = _model_name(studio, form.pop("model"), form.pop("hub_id"))
    name = (form.pop("run_name") or "").strip() or default_run_name(form["method"])
    key, path = studio.workspace.new_run_dir(session_id, name)
    given = {k: v for k, v in form.items() if v is not None and v != ""}
    settings = {k: v for k, v in given.items() if k in SETTINGS}
    for integer in ("max_steps", "batch_size", "grad_accum", "max_length", "lora_r", "lora_alpha", "seed"):
        if integer in settings:
            settings[integer] = int(settings[integer])
    takes = unlearning_methods()[settings["method"]].defaults()
    params = {k: v for k, v in given.items() if k in takes}   # fields of other methods are hidden: ignored
    config = UnlearnConfig(model=model, forget=data["forget"], retain=data.get("retain"),
                           normal=data.get("normal"), out=str(path), device=studio.device,
                           method_params=params or None, **settings)
    return key, config


def _model_name(studio: Studio, choice: str, hub_id: str | None) -> str:
    if hub_id and hub_id.strip():
        require(studio.online, "hub models are not available: this studio runs offline",
                "pick the bundled or demo model, or start the studio with --online")
        return HUB_PREFIX + hub_id.strip()
    choices = studio.model_choices()
    require(choice in choices, "unknown model choice", "pick a model from the list")
    return choices[choice]


def command_preview(config: UnlearnConfig) -> str:
    """The `unlearn train` command that does what the form does (a way to learn the CLI)."""
    default = UnlearnConfig()
    parts = ["unlearn", "train"]
    for f in fields(UnlearnConfig):
        value = getattr(config, f.name)
        if f.name in ("method_params", "resume", "overwrite") or value == getattr(default, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        parts += [flag] if value is True else [f"--no-{f.name.replace('_', '-')}"] if value is False else [flag, str(value)]
    for name, value in (config.method_params or {}).items():
        parts += ["--" + name.replace("_", "-"), str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def run_command(run) -> str:
    """The command line of a run read back from its config.json (a reopened run shows how it was made)."""
    saved = run.config()
    known = {f.name for f in fields(UnlearnConfig)} - {"method_params", "resume"}
    try:
        config = UnlearnConfig.from_dict({k: v for k, v in saved.items() if k in known})
    except (TypeError, UnlearnError):
        return ""
    defaults = _method_defaults(config.method)
    changed = {k: v for k, v in (saved.get("method_params") or {}).items() if defaults.get(k) != v}
    config = replace(config, method_params=changed or None)   # the flags a user would type: non-defaults
    return public_text(command_preview(config))


def _method_defaults(name: str) -> dict:
    methods = unlearning_methods()
    return methods[name].defaults() if name in methods else {}


def _help(setting: str) -> str:
    """A training setting's help text, as `unlearn train --help` prints it."""
    return next(f.metadata["help"] for f in fields(UnlearnConfig) if f.name == setting)


def _param_field(name: str, field: dict):
    """A hyper-parameter's input: a number, or a text box for a text-valued one (e.g. a module name)."""
    from core.methods import METHODS

    kind = next(p.kind for m in METHODS.values() for p in m.params if p.name == name)
    if kind is str:
        return gr.Textbox(elem_id=name.replace("_", "-"), **field)
    if kind is bool:
        return gr.Checkbox(elem_id=name.replace("_", "-"), **{k: v for k, v in field.items() if k != "value"})
    return gr.Number(elem_id=name.replace("_", "-"), precision=0 if kind is int else None, **field)


def create_train_tab(studio: Studio, session, data, run_key):
    methods = list(unlearning_methods())
    with gr.Row():
        with gr.Column(scale=2):
            model = gr.Dropdown(list(studio.model_choices()), value=next(iter(studio.model_choices())), label="Model")
            hub_id = gr.Textbox(label="…or a Hugging Face hub id (online only)", placeholder="org/model-name",
                                visible=studio.online)
            method = gr.Dropdown(methods, value=DEFAULTS["method"], label="Method", elem_id="method")
            method_info = gr.Markdown(method_help(DEFAULTS["method"]))
        with gr.Column(scale=2):
            run_name = gr.Textbox(label="Run name (optional)", placeholder="npo_rt-…", elem_id="run-name")
            max_steps = gr.Number(DEFAULTS["max_steps"], label="Steps", precision=0, minimum=1, elem_id="max-steps")
            lr = gr.Number(DEFAULTS["lr"], label="Learning rate", elem_id="lr")
            batch_size = gr.Number(DEFAULTS["batch_size"], label="Batch size", precision=0, elem_id="batch-size")
            lora = gr.Checkbox(DEFAULTS["lora"], label="LoRA adapter (faster, smaller; off = full fine-tuning)")
    with gr.Accordion("Advanced settings", open=False):
        with gr.Row():
            param_fields = [_param_field(name, field) for name, field in zip(tunable(), method_fields(DEFAULTS["method"]))]
        with gr.Row():
            grad_accum = gr.Number(1, label="gradient accumulation", precision=0)
        with gr.Row():
            max_length = gr.Number(256, label="max tokens per example", precision=0)
            lora_r = gr.Number(16, label="LoRA rank", precision=0)
            lora_alpha = gr.Number(32, label="LoRA alpha", precision=0)
            seed = gr.Number(42, label="seed", precision=0)
            warmup_ratio = gr.Number(0.1, label="warm-up ratio")
        with gr.Row():   # any method: its forget loss also taken on the weights as a 4-bit export stores them
            quant_aware = gr.Number(0, label="quant-aware weight (0 = off)", minimum=0, elem_id="quant-aware",
                                    info=_help("quant_aware"))
            formats = [*FILE_TYPES, (f"both: {','.join(FILE_TYPES)}", ",".join(FILE_TYPES))]
            quant_aware_format = gr.Dropdown(formats, value="q4_0", label="…against the GGUF file type",
                                             elem_id="quant-aware-format", info=_help("quant_aware_format"))
    with gr.Row():
        start = gr.Button("Start", variant="primary", elem_id="start")
        stop = gr.Button("Stop", variant="stop", elem_id="stop")
        resume = gr.Button("Resume", elem_id="resume")
    memory = gr.Markdown("", elem_id="memory-estimate")   # filled on page load: the bundled model may be converting
    status = gr.Markdown("No run yet.", elem_id="train-status")
    command = gr.Code("# Start a run: the command that does the same appears here",
                      label="The same run from the command line", language="shell", interactive=False, lines=2,
                      elem_id="train-command")
    with gr.Row():
        loss_plot = gr.Plot(poll.line_chart(poll.empty_curves(), LOSS_TITLE), show_label=False, elem_id="loss-plot")
        nll_plot = gr.Plot(poll.line_chart(poll.empty_curves(), NLL_TITLE), show_label=False, elem_id="nll-plot")
    summary = gr.Dataframe(label="Before → after", interactive=False, visible=False)
    log = gr.Textbox(label="Log", lines=8, max_lines=8, autoscroll=True, elem_id="train-log")
    timer = gr.Timer(1.0)

    form = [model, hub_id, run_name, method, max_steps, lr, batch_size, lora, grad_accum, max_length, lora_r,
            lora_alpha, seed, warmup_ratio, quant_aware, quant_aware_format, *param_fields]
    names = form_names()

    @guarded
    def on_start(session_id, current_data, *values):
        key, config = build_config(studio, session_id, current_data, dict(zip(names, values)))
        try:
            studio.jobs.start(config, key, studio.workspace.log_path(key))
        except UnlearnError:
            config_dir = studio.workspace.root / key
            if config_dir.exists() and not any(config_dir.iterdir()):
                config_dir.rmdir()   # nothing started: leave no empty run behind
            raise
        return key, message(f"started {key.split('/')[-1]}", "info"), public_text(command_preview(config))

    @guarded
    def on_stop(session_id, key):
        run = studio.workspace.open_run(session_id, key)
        require(run.is_active(), "this run is not running", "start or resume a run first")
        studio.jobs.stop(run)
        return message("stopping after the current step (a checkpoint is kept)", "info")

    @guarded
    def on_resume(session_id, key):
        run = studio.workspace.open_run(session_id, key)
        studio.jobs.resume(run, key, studio.workspace.log_path(key))
        return message("resuming from the last checkpoint", "info")

    def on_tick(session_id, key, drawn, force=False):
        """Status, log and table every tick; the charts and the command only when the metrics changed (or
        `force`, when the Train tab is shown): a chart is sent whole, so unchanged ones are skipped."""
        if not key:
            return (gr.skip(),) * 7
        try:
            run = studio.workspace.open_run(session_id, key)
        except UnlearnError:
            return (gr.skip(),) * 7
        stamp = f"{key}:{run.metrics_path.stat().st_size if run.metrics_path.is_file() else 0}"
        redraw = force or stamp != drawn
        losses, nlls = gr.skip(), gr.skip()
        if redraw:
            loss_frame, nll_frame = poll.curves(run)
            losses, nlls = poll.line_chart(loss_frame, LOSS_TITLE), poll.line_chart(nll_frame, NLL_TITLE)
        table = poll.summary_table(run)
        return (public_text(poll.status_text(run)), losses, nlls,
                public_text(poll.log_tail(studio.workspace.log_path(key))),
                gr.update(value=table, visible=table is not None), stamp,
                run_command(run) if redraw else gr.skip())

    def on_show(session_id, key, drawn):
        return on_tick(session_id, key, drawn, force=True)

    method.change(lambda name: (method_help(name), *(gr.update(**field) for field in method_fields(name))), method,
                  [method_info, *param_fields], api_name=False)
    sized_by = [model, hub_id, method, lora, batch_size, max_length]

    def on_size(*values):
        return memory_estimate(studio, *values)
    for changed in sized_by:
        changed.change(on_size, sized_by, memory, api_name=False, show_progress="hidden")
    start.click(on_start, [session, data, *form], [run_key, status, command], api_name="start")
    stop.click(on_stop, [session, run_key], status, api_name="stop")
    resume.click(on_resume, [session, run_key], status, api_name="resume")
    drawn = gr.State("")   # which run and metrics size the plots show
    outputs = [status, loss_plot, nll_plot, log, summary, drawn, command]
    timer.tick(on_tick, [session, run_key, drawn], outputs, api_name="poll", show_progress="hidden")
    return {"status": status, "redraw": (on_show, [session, run_key, drawn], outputs),
            "memory": (on_size, sized_by, memory)}
