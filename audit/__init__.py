"""`unlearn audit`: does a run's forgetting survive relearning, quantisation and rephrasing?

Every attack (audit/attacks/, one module each) gives the forget-answer figures of an attacked model beside
the original's and the unlearned model's on the same forget data, and the retain figures beside them; the
recovery fraction per figure and a verdict per attack and overall follow (audit/recovery.py). The run's own
files are only read; everything an attack builds lives in a scratch folder removed afterwards."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from core.errors import require
from core.runs import AUDIT_REPORT, RunDir, RunState, read_json, write_json_atomic, write_text_atomic

from . import recovery
from .attacks import AuditContext, default_attacks, get_attack, resolve_options

AUDIT_JSON, AUDIT_MD = AUDIT_REPORT, "audit.md"


def run_audit(run_dir, out, attacks=None, options: dict | None = None, max_samples: int = 40,
              max_new_tokens: int = 48, batch_size: int = 8, device: str = "cpu", log=print,
              dtype: str = "auto", update: bool = False) -> dict:
    """Attack the run in `run_dir` (a path or RunDir) and write OUT/audit.json and audit.md. `attacks`: names
    (default: every attack enabled by default); `options`: attack options by their declared names (each
    attack's `params`), checked against the chosen attacks' declarations. `update`: redo only `attacks` and
    keep the other attacks' results of the audit already in OUT (after one attack's definition changed, or
    to add one), which must have measured the same samples."""
    from core.data import load_examples
    from core.evaluation.evaluator import Settings

    started = time.time()
    run = RunDir(run_dir)
    require(run.holds_run(), f"{run.path} is not a run directory", "name the --out directory of a finished run")
    config = run.config()
    require(bool(config.get("forget")), f"the run in {run.path} records no forget set",
            "audit a run of `unlearn train`")
    names = default_attacks() if attacks is None else attacks
    chosen = [get_attack(name) for name in dict.fromkeys(a.strip() for a in names if a.strip())]
    require(bool(chosen), "no audit attack given", f"pass e.g. --attacks {','.join(default_attacks())}")
    chosen_options = resolve_options(chosen, options)
    settings = Settings(max_samples=max_samples, max_new_tokens=max_new_tokens, batch_size=batch_size)
    settings.validate()
    forget = load_examples(config["forget"], "forget")[:max_samples]
    retain = load_examples(config["retain"], "retain")[:max_samples] if config.get("retain") else None
    out = Path(out)
    earlier = _earlier_report(out, len(forget), len(retain or []), device, dtype) if update else None
    out.mkdir(parents=True, exist_ok=True)
    status = RunDir(out)   # audit/status.json: the studio follows (and outlives) the audit through it
    status.write_status(RunState.RUNNING, pid=os.getpid(), message="checking the attacks")
    context = AuditContext(run=run.path, config=config, work=out / ".work", forget=forget, retain=retain,
                           measure=None, baseline=None, settings=settings, device=device, dtype=dtype, log=log)
    try:
        for attack in chosen:        # every refusal before any model is loaded
            context.options = chosen_options[attack.name]
            attack.check(context)
        report = _attack_all(context, chosen, chosen_options, status, started)
        if earlier:
            report = _merged(earlier, report)
    except KeyboardInterrupt:
        status.write_status(RunState.STOPPED, pid=os.getpid(), message="stopped; no report was written")
        raise
    except Exception as exc:
        status.write_status(RunState.FAILED, pid=os.getpid(), error=str(exc))
        raise
    write_json_atomic(out / AUDIT_JSON, report)
    write_text_atomic(out / AUDIT_MD, markdown(report))
    status.write_status(RunState.FINISHED, pid=os.getpid(), message=f"overall: {report['overall']}",
                        progress=1.0)
    return report


def _attack_all(context: AuditContext, chosen: list, options: dict[str, dict], status: RunDir, started: float) -> dict:
    from core.evaluation.evaluator import set_scores
    from core.models import dtype_name, open_model

    run, config, settings, device, log = context.run, context.config, context.settings, context.device, context.log
    forget, retain = context.forget, context.retain

    unlearned = open_model(str(run), device, dtype=context.dtype)
    original = open_model(unlearned.original, device, dtype=context.dtype)
    context.models = {"original": (original.model, original.tokenizer),
                      "unlearned": (unlearned.model, unlearned.tokenizer)}
    reference = (original.model, original.tokenizer)

    def measure(model, tokenizer, examples, name):
        scores, _ = set_scores(model, tokenizer, examples, settings, reference, name)
        figures = {"nll": scores["nll"], "prob": scores["prob"]}
        if "rougeL_recall" in scores:
            figures["rougeL"] = scores["rougeL_recall"]
        return figures

    baselines: dict[str, dict] = {}

    def baseline(name, examples):
        if name not in baselines:
            baselines[name] = {stage: measure(model, tokenizer, examples, f"{stage} {name}")
                               for stage, (model, tokenizer) in context.models.items()}
        return baselines[name]

    context.measure, context.baseline = measure, baseline
    results = []
    for number, attack in enumerate(chosen):
        log(f"audit: {attack.name} — {attack.summary}")
        status.write_status(RunState.RUNNING, pid=os.getpid(), message=f"{attack.name}: {attack.summary}",
                            progress=round(number / len(chosen), 4), attack=attack.name)
        attack_started = time.time()
        context.work.mkdir(parents=True, exist_ok=True)
        context.options = options[attack.name]
        try:
            found = attack.run(context)
        finally:
            shutil.rmtree(context.work, ignore_errors=True)
        for result in found:
            result.update(judged(result), seconds=round(time.time() - attack_started, 1))
            results.append(result)
    return {"run": str(run), "method": config.get("method"), "attacks": [a.name for a in chosen],
            "options": {a.name: options[a.name] for a in chosen if options[a.name]},
            "dtype": dtype_name(unlearned.model.dtype),
              **_summed_up(results), "samples": {"forget": len(forget), "retain": len(retain or [])},
              "wall_seconds": round(time.time() - started, 1)}


def _earlier_report(out: Path, forget: int, retain: int, device: str, dtype: str) -> dict:
    """The audit `--update` adds to, refused unless it measured what this one will."""
    from core.models import dtype_name, inference_dtype, pick_device

    earlier = read_json(out / AUDIT_JSON)
    require(earlier is not None, f"there is no audit in {out} to update", "leave out --update to make one")
    scored_in = dtype_name(inference_dtype(dtype, pick_device(device)))
    require(earlier.get("dtype", "float32") == scored_in,
            f"the audit in {out} scored its models in {earlier.get('dtype', 'float32')}, this one would in {scored_in}",
            f"pass --dtype {earlier.get('dtype', 'float32')}, or leave out --update to redo the whole audit")
    measured = earlier.get("samples", {})
    require(measured == {"forget": forget, "retain": retain},
            f"the audit in {out} measured {measured.get('forget')} forget and {measured.get('retain')} retain "
            f"examples, this one would measure {forget} and {retain}",
            f"pass the --max-samples it was made with, or leave out --update to redo the whole audit")
    return earlier


def _attack_of(result: dict) -> str:
    return result["name"].split(":")[0]   # "quantize: gguf-q4_0" comes from the quantize attack


def _merged(earlier: dict, report: dict) -> dict:
    """The earlier audit with the redone attacks' results in place of its own, in its order of attacks."""
    redone = set(report["attacks"])
    attacks = list(dict.fromkeys(earlier["attacks"] + report["attacks"]))
    by_attack = {a: [r for r in earlier["results"] if _attack_of(r) == a] for a in attacks if a not in redone}
    by_attack.update({a: [r for r in report["results"] if _attack_of(r) == a] for a in redone})
    results = [r for a in attacks for r in by_attack[a]]
    updated = earlier.get("updated", []) + [{"attacks": report["attacks"], "at": time.strftime("%Y-%m-%d %H:%M"),
                                              "wall_seconds": report["wall_seconds"]}]
    options = {**earlier.get("options", {}), **report["options"]}
    return {**rejudged({**report, "results": results}), "attacks": attacks, "options": options, "updated": updated,
            "wall_seconds": round(earlier["wall_seconds"] + report["wall_seconds"], 1)}


def rejudged(report: dict) -> dict:
    """The report's recoveries and verdicts worked out again from its measured figures with the current
    definitions (audit/recovery.py), so that a changed rule needs no new measurement."""
    return {**report, **_summed_up([{**r, **judged(r)} for r in report["results"]])}


def _summed_up(results: list[dict]) -> dict:
    """The judged results with the audit's overall verdict and the rules it was judged by."""
    return {"results": results, "overall": recovery.overall({r["name"]: r["verdict"] for r in results}),
            "thresholds": {"robust_below": recovery.ROBUST, "shallow_above": recovery.SHALLOW,
                           "min_change": recovery.MIN_CHANGE}}


def judged(result: dict) -> dict:
    forget = result["forget"]
    values = recovery.recoveries(forget["original"], forget["unlearned"], forget["attacked"],
                                 forget.get("attacked_original"))
    verdict, worst = recovery.verdict(values)
    judgement = {"recovery": values, "verdict": verdict, "worst_recovery": worst}
    if "retain" in result:
        retain = result["retain"]
        judgement["retain_change"] = {f: retain["attacked"][f] - retain["unlearned"][f]
                                      for f in retain["attacked"] if f in retain["unlearned"]}
    return judgement


def markdown(report: dict) -> str:
    from core.evaluation.report import table

    rows = []
    for r in report["results"]:
        f = r["forget"]
        rows.append([r["name"], r["verdict"].split(":")[0], r["worst_recovery"],
                     *(r["recovery"].get(k) for k in recovery.FIGURES),
                     f["original"].get("nll"), (f.get("attacked_original") or {}).get("nll"),
                     f["unlearned"].get("nll"), f["attacked"].get("nll"), (r.get("retain_change") or {}).get("nll")])
    header = ["attack", "verdict", "worst recovery", "NLL recovery", "prob. recovery", "ROUGE-L recovery",
              "forget NLL original", "original asked so (rephrasing)", "unlearned", "attacked", "retain NLL change"]
    return "\n".join([f"# Audit of {report['run']} ({report['method']})", "",
                      f"Overall: **{report['overall']}** (each attack's largest recovery over its figures: below "
                      f"{recovery.ROBUST} robust, above {recovery.SHALLOW} shallow). Recovery = (attacked − "
                      "unlearned) / (original − unlearned); rephrasing sets each prompt against the original model "
                      "asked the same way (docs/audit.md); '-' where unlearning changed the figure too little "
                      "to measure a recovery.", "", table(header, rows), "",
                      f"Models scored in {report.get('dtype', 'float32')}. Wall time {report['wall_seconds']} s.",
                      *_options_line(report.get("options")), ""])


def _options_line(options: dict | None) -> list[str]:
    """The attacks' options the audit ran with, one clause per attack (none for an audit without options)."""
    if not options:
        return []
    clauses = [f"{attack}: " + ", ".join(f"{name} {value}" for name, value in values.items())
               for attack, values in options.items()]
    return ["", f"Attack options: {'; '.join(clauses)}."]

