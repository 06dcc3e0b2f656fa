"""`export_run`: one unlearning run -> one bundle of artifacts, one set per export format (export/formats/:
Hugging Face, GGUF, ONNX, and any format registered beside them), with parity.json, manifest.json and a
model card, written atomically. This module knows no format by name: it asks the registry.

The bundle is assembled in a hidden staging directory beside `out` and renamed into place only when
everything, checks included, is done; any failure or interruption removes the staging directory, so `out`
is either a whole bundle or absent. A staging directory left by a killed process (SIGKILL gives no chance
to clean up) is removed by the next export to the same place.

Layout:
    manifest.json  parity.json  README.md (model card)
    tokenizer/                  tokenizer + chat template (what `unlearn chat` uses for every format)
    hf/                         merged model, safetensors, generation config
    adapter/                    the run's PEFT adapter (LoRA runs)
    gguf/model-<quant>.gguf     llama.cpp; for LoRA runs also base-f16.gguf + forget-patch-f16.gguf
    onnx/<precision>/model.onnx (+ model.onnx.data)
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from core.errors import UnlearnError, require
from core.models import load_model, load_run_model, run_tokenizer
from core.scoring import prompt_form, scored_on
from core.runs import AUDIT_REPORT, RunDir, read_json, staging_dir, usual_permissions, write_json_atomic

from .card import model_card
from .progress import ParityProgress, library_noise_off
from .parity import (GREEDY_TOKENS, build_probes, forgetting_check, goal_status, retain_damage_check, run_probes,
                     summarise)
from .formats import WriteJob, format_of, formats, get_format, pick_formats
from .hf import TorchRunner, write_hf
from .source import RunSource, read_run

MANIFEST_VERSION = 1
PARTIAL_MARK = ".partial-"
# The unlearned model, merged, is written here first: every converter reads it, and the hf format keeps it
# as its artifact; when no format keeps it, it is removed once every format is written.
MERGED_FOLDER = "hf"


def default_formats() -> list[str]:
    """What `unlearn export` makes when --formats is not given."""
    return [fmt.name for fmt in formats() if fmt.in_default]


def export_run(run_dir: str | Path, out: str | Path, formats=None, parity_check: bool = True,
               parity_examples: int = 8, forget: str | None = None, retain: str | None = None,
               overwrite: bool = False, log: Callable[[str], None] = print, show_progress: bool = False,
               **variants) -> dict:
    """Export a finished run; returns the manifest (also written to out/manifest.json). `formats`: names
    from export.formats (default: default_formats()); `variants`: each format's variants under its own
    keyword (gguf_quants=("f16", "q8_0"), onnx_precisions=("fp32",)), its defaults where not given;
    `show_progress`: a progress bar with the time left over the parity checks (on stderr)."""
    source = read_run(run_dir)
    plan = _plan(source, default_formats() if formats is None else formats, variants)
    target = _check_target(Path(out), overwrite)
    _remove_stale_partials(target)
    staging = staging_dir(f".{target.name}{PARTIAL_MARK}{os.getpid()}-", target.parent)
    try:
        with library_noise_off():
            manifest = _build(source, plan, staging, log, parity_check=parity_check,
                              parity_examples=parity_examples, forget=forget, retain=retain,
                              show_progress=show_progress)
        _swap_in(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"bundle written to {target}")
    return manifest


# ---------------------------------------------------------------- checks before any work

def _plan(source: RunSource, names, variants: dict) -> dict:
    """The formats asked for (as given, for the manifest) and {format: its variants} in the order they are
    written; every problem is found here, before any work."""
    keywords = {fmt.variants.keyword for fmt in formats() if fmt.variants}
    unexpected = sorted(set(variants) - keywords)
    if unexpected:
        raise TypeError(f"export_run() got unexpected keyword argument(s) {', '.join(unexpected)} "
                        f"(the formats' variants are {', '.join(sorted(keywords))})")
    chosen = pick_formats(names)
    require(chosen, "no export format given", f"pass e.g. --formats {','.join(default_formats())}")
    ordered = sorted(set(chosen), key=formats().index)
    plan = {"formats": [fmt.name for fmt in chosen],
            "variants": {fmt.name: _checked_variants(fmt, variants) for fmt in ordered}}
    missing = {fmt: why for fmt in ordered if (why := fmt.available())}
    if missing:
        raise UnlearnError("; ".join(missing.values()),
                           "; ".join(fmt.install for fmt in missing if fmt.install) or "install what it needs")
    refused = {fmt.name: why for fmt in ordered if (why := fmt.refusal(source))}
    if refused:   # every format that cannot be made, in one message, before any work
        possible = [fmt.name for fmt in chosen if fmt.name not in refused] or \
            [name for name in default_formats() if name not in refusals(source)]
        reasons = "; ".join(f"{fmt}: {why}" for fmt, why in refused.items())
        raise UnlearnError(f"this run cannot be exported to {reasons}",
                           f"export the formats that work for it: --formats {','.join(possible)}")
    return plan


def _checked_variants(fmt, given: dict) -> list[str]:
    """The variants asked of one format (its defaults when its keyword was not given), checked."""
    if not fmt.variants:
        return []
    return fmt.variants.check(given.get(fmt.variants.keyword, fmt.variants.default))


def refusals(source: RunSource) -> dict[str, str]:
    """Each registered format this run cannot be exported to here, with the reason: a package that is not
    installed, or a model the format's converter does not take (hf always works)."""
    reasons = {fmt.name: fmt.available() or fmt.refusal(source) for fmt in formats()}
    return {name: why for name, why in reasons.items() if why}


def _check_target(target: Path, overwrite: bool) -> Path:
    target = target.expanduser().absolute()
    if target.exists():
        is_bundle = (target / "manifest.json").is_file()
        require(is_bundle or (target.is_dir() and not any(target.iterdir())),
                f"{target} exists and is not an export bundle", "choose a new --out directory")
        require(not is_bundle or overwrite, f"{target} already holds a bundle", "pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _remove_stale_partials(target: Path) -> None:
    for partial in target.parent.glob(f".{target.name}{PARTIAL_MARK}*"):
        pid = partial.name.split(PARTIAL_MARK, 1)[1].split("-", 1)[0]
        if not (pid.isdigit() and _alive(int(pid))):
            shutil.rmtree(partial, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _swap_in(staging: Path, target: Path) -> None:
    usual_permissions(staging)
    if target.exists():  # an old bundle (checked above): move it aside, then drop it once the new one is in
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "bundle")
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


# ---------------------------------------------------------------- building

def _build(source: RunSource, plan: dict, staging: Path, log, parity_check: bool, **parity_options) -> dict:
    job = WriteJob(source, staging, staging / MERGED_FOLDER, log)
    into = f"the dequantised {source.base_quantization} " if source.base_quantization else ""
    log(f"loading the run's model ({'LoRA merged into ' + into + source.base_model if source.is_lora else 'full'})")
    tokenizer = run_tokenizer(source.run_dir)
    model = load_run_model(source.run_dir).eval()
    with job.timed("export_total"):
        artifacts = _write_artifacts(job, plan, model, tokenizer)
    report = None
    if parity_check:
        log("checking parity and forgetting in every runtime")
        with job.timed("parity"):
            report = _check(source, model, tokenizer, staging, artifacts, **parity_options)
        write_json_atomic(staging / "parity.json", report)
    manifest = _manifest(source, plan, artifacts, report, job.timings)
    audit = run_audit(source)
    if audit:   # the run's `unlearn audit`, carried into the bundle, its card and its manifest
        run = RunDir(source.run_dir)
        (staging / run.audit_dir.name).mkdir()
        for name in ("audit.json", "audit.md"):
            if (run.audit_dir / name).is_file():
                shutil.copy2(run.audit_dir / name, staging / run.audit_dir.name / name)
        manifest["audit"] = audit_summary(audit)
    (staging / "README.md").write_text(model_card(source, manifest, report, audit), encoding="utf-8")
    manifest["files"] = _file_list(staging)
    write_json_atomic(staging / "manifest.json", manifest)
    return manifest


def _write_artifacts(job: WriteJob, plan: dict, model, tokenizer) -> dict:
    """Every requested artifact, each format's in turn, all read from the merged model folder."""
    tokenizer.save_pretrained(job.bundle / "tokenizer")
    with job.timed("hf"):
        write_hf(model, tokenizer, job.merged_dir)
    artifacts: dict[str, dict] = {}
    for name, variants in plan["variants"].items():
        artifacts.update(get_format(name).write(job, variants))
    if not any(artifact["path"] == MERGED_FOLDER for artifact in artifacts.values()):
        shutil.rmtree(job.merged_dir)
    return artifacts


# ---------------------------------------------------------------- checks

def open_runner(name: str, artifact: dict, bundle: str | Path):
    """The real runtime for one artifact of a bundle (also used by chat and the benchmark); an artifact no
    registered format makes is refused."""
    return format_of(name).open_runner(name, artifact, Path(bundle))


def _check(source: RunSource, model, tokenizer, bundle: Path, artifacts: dict, parity_examples: int,
           forget: str | None, retain: str | None, show_progress: bool = False) -> dict:
    probes = build_probes(source.config, tokenizer, parity_examples, forget, retain)
    progress = ParityProgress(len(probes) * (2 + len(artifacts)), show_progress)
    try:
        return _check_runtimes(source, model, tokenizer, bundle, artifacts, probes, progress)
    finally:
        progress.close()


def _check_runtimes(source: RunSource, model, tokenizer, bundle: Path, artifacts: dict, probes: list,
                    progress: ParityProgress) -> dict:
    reference = run_probes(TorchRunner(model), probes, tick=progress.runtime("pytorch (unlearned)"))
    forced = reference["tokens"]
    original_raw = run_probes(TorchRunner(load_model(source.base_model).eval(), name="original"), probes,
                              forced=forced, tick=progress.runtime("original"))
    unlearned = summarise(reference, reference, probes, tokenizer)
    original = summarise(original_raw, reference, probes, tokenizer)
    formats_scores, raws = {}, {}
    for name, artifact in artifacts.items():
        runner = open_runner(name, artifact, bundle)
        try:
            raws[name] = run_probes(runner, probes, forced=forced, tick=progress.runtime(name))
        finally:
            runner.close()
        formats_scores[name] = summarise(raws[name], reference, probes, tokenizer)
        goal = goal_status(format_of(name).goals.get(name), formats_scores[name])
        if goal:
            formats_scores[name]["goal"] = goal
    for fmt in formats():
        for name, other, key in fmt.cross_checks:
            if name in raws and other in raws:
                formats_scores[name][key] = summarise(raws[name], raws[other], probes, tokenizer)
    forgetting, warnings = forgetting_check(formats_scores, unlearned, original)
    warnings += retain_damage_check(formats_scores, unlearned, source.base_quantization)
    counts = {role: sum(p.role == role for p in probes) for role in ("forget", "retain")}
    # the PyTorch rows in float32; each artifact's row in its own runtime and weights (a quantisation's)
    basis = scored_on({role: n for role, n in counts.items() if n}, "float32", prompt_form(tokenizer))
    return {"probes": {**counts, "greedy_tokens": GREEDY_TOKENS}, "scored_on": basis,
            "reference": "unlearned model in PyTorch fp32", "pytorch": unlearned, "original": original,
            "formats": formats_scores, "forgetting": forgetting, "warnings": warnings}


# ---------------------------------------------------------------- audit

def run_audit(source: RunSource) -> dict | None:
    """The run's own audit (`unlearn audit RUN`, written to RUN/audit as docs/audit.md advises)."""
    return read_json(RunDir(source.run_dir).audit_report_path)


def audit_summary(audit: dict) -> dict:
    return {"overall": audit["overall"], "path": f"audit/{AUDIT_REPORT}", "control": audit.get("control"),
            "attacks": {r["name"]: {"verdict": r["verdict"].split(":")[0], "worst_recovery": r["worst_recovery"],
                                    "worst_residual": r.get("worst_residual")}
                        for r in audit["results"]}}


# ---------------------------------------------------------------- manifest

MANIFEST_METRICS = ("token_agreement", "greedy_prefix_agreement", "forget_nll", "retain_nll", "forget_rougeL",
                    "first_logits_max_abs_diff")


def _manifest(source: RunSource, plan: dict, artifacts: dict, report: dict | None, timings: dict) -> dict:
    metrics = {}
    if report:
        metrics = {name: {k: v for k, v in scores.items() if k in MANIFEST_METRICS}
                   for name, scores in report["formats"].items()}
    return {"manifest_version": MANIFEST_VERSION, "created_at": time.time(),
            "source_run": {"path": str(source.run_dir.absolute()), "method": source.method, "lora": source.is_lora,
                           "base_model": source.base_model, "base_quantization": source.base_quantization,
                           "architecture": source.architecture,
                           "forget": source.config.get("forget"), "retain": source.config.get("retain"),
                           "summary": source.summary},
            "formats": plan["formats"],
            **{fmt.variants.keyword: plan["variants"].get(fmt.name, []) for fmt in formats() if fmt.variants},
            "artifacts": artifacts, "metrics": metrics, "metrics_scored_on": (report or {}).get("scored_on"),
            "warnings": report["warnings"] if report else [],
            "timings_s": timings}


def _file_list(root: Path) -> list[dict]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "manifest.json")
    return [{"path": str(p.relative_to(root)), "size": p.stat().st_size, "sha256": _sha256(p)} for p in files]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(bundle: str | Path) -> dict:
    manifest = read_json(Path(bundle) / "manifest.json")
    require(manifest is not None, f"{bundle} is not an export bundle (no manifest.json)",
            "give a directory written by `unlearn export`")
    return manifest
