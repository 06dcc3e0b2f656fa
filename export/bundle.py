"""`export_run`: one unlearning run -> one bundle of Hugging Face / GGUF / ONNX artifacts with parity.json,
manifest.json and a model card, written atomically.

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
from core.runs import AUDIT_REPORT, RunDir, read_json, staging_dir, usual_permissions, write_json_atomic

from . import card, gguf, hf, onnx, parity
from .merge import load_original, load_run_tokenizer, load_unlearned
from .source import RunSource, read_run

FORMATS = ("hf", "gguf", "onnx")
DEFAULT_QUANTS = ("f16", "q8_0", "q4_k_m")
MANIFEST_VERSION = 1
PARTIAL_MARK = ".partial-"


def export_run(run_dir: str | Path, out: str | Path, formats=FORMATS, gguf_quants=DEFAULT_QUANTS,
               onnx_precisions=onnx.PRECISIONS, parity_check: bool = True, parity_examples: int = 8,
               forget: str | None = None, retain: str | None = None, overwrite: bool = False,
               log: Callable[[str], None] = print) -> dict:
    """Export a finished run; returns the manifest (also written to out/manifest.json)."""
    source = read_run(run_dir)
    plan = _plan(source, formats, gguf_quants, onnx_precisions)
    target = _check_target(Path(out), overwrite)
    _remove_stale_partials(target)
    staging = staging_dir(f".{target.name}{PARTIAL_MARK}{os.getpid()}-", target.parent)
    try:
        manifest = _build(source, plan, staging, log, parity_check=parity_check, parity_examples=parity_examples,
                          forget=forget, retain=retain)
        _swap_in(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"bundle written to {target}")
    return manifest


# ---------------------------------------------------------------- checks before any work

def _plan(source: RunSource, formats, gguf_quants, onnx_precisions) -> dict:
    formats = [f.strip().lower() for f in formats if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    require(not unknown, f"unknown export format(s): {', '.join(unknown)}", f"choose from {', '.join(FORMATS)}")
    require(formats, "no export format given", "pass e.g. --formats hf,gguf,onnx")
    plan = {"formats": formats, "gguf": [], "onnx": []}
    if "gguf" in formats:
        plan["gguf"] = gguf.check_quants(list(gguf_quants))
    if "onnx" in formats:
        plan["onnx"] = onnx.check_precisions(list(onnx_precisions))
    refused = {fmt: why for fmt, why in refusals(source).items() if fmt in formats}
    if refused:   # every format that cannot be made, in one message, before any work
        possible = [fmt for fmt in formats if fmt not in refused] or ["hf"]
        raise UnlearnError("this run cannot be exported to " + "; ".join(f"{fmt}: {why}" for fmt, why in refused.items()),
                           f"export the formats that work for it: --formats {','.join(possible)}")
    return plan


def refusals(source: RunSource) -> dict[str, str]:
    """Each format this run's model cannot be exported to, with the reason (hf always works)."""
    reasons = {"gguf": gguf.refusal(source.architecture), "onnx": onnx.refusal(source.model_config)}
    return {fmt: why for fmt, why in reasons.items() if why}


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
    timings: dict[str, float] = {}
    log(f"loading the run's model ({'LoRA merged into ' + source.base_model if source.is_lora else 'full'})")
    tokenizer = load_run_tokenizer(source)
    model = load_unlearned(source)
    with _timed(timings, "export_total"):
        artifacts = _write_artifacts(source, plan, model, tokenizer, staging, log, timings)
    report = None
    if parity_check:
        log("checking parity and forgetting in every runtime")
        with _timed(timings, "parity"):
            report = _check(source, model, tokenizer, staging, artifacts, **parity_options)
        write_json_atomic(staging / "parity.json", report)
    manifest = _manifest(source, plan, artifacts, report, timings)
    audit = run_audit(source)
    if audit:   # the run's `unlearn audit`, carried into the bundle, its card and its manifest
        (staging / AUDIT_FOLDER).mkdir()
        for name in ("audit.json", "audit.md"):
            if (source.run_dir / AUDIT_FOLDER / name).is_file():
                shutil.copy2(source.run_dir / AUDIT_FOLDER / name, staging / AUDIT_FOLDER / name)
        manifest["audit"] = audit_summary(audit)
    (staging / "README.md").write_text(card.model_card(source, manifest, report, audit), encoding="utf-8")
    manifest["files"] = _file_list(staging)
    write_json_atomic(staging / "manifest.json", manifest)
    return manifest


def _write_artifacts(source: RunSource, plan: dict, model, tokenizer, staging: Path, log, timings: dict) -> dict:
    """Every requested artifact; the merged HF directory is written in any case (the converters read it)."""
    tokenizer.save_pretrained(staging / "tokenizer")
    artifacts: dict[str, dict] = {}
    with _timed(timings, "hf"):
        merged_dir = staging / ("hf" if "hf" in plan["formats"] else ".merged")
        hf.write_hf(model, tokenizer, merged_dir)
        if "hf" in plan["formats"]:
            artifacts["hf"] = {"path": "hf"}
            if source.is_lora:
                hf.copy_adapter(source, staging / "adapter")
    if plan["gguf"]:
        log(f"GGUF: {', '.join(plan['gguf'])} (llama.cpp converter and quantiser)")
        with _timed(timings, "gguf"):
            artifacts.update(_write_gguf(source, merged_dir, staging / "gguf", plan["gguf"], timings))
    if plan["onnx"]:
        log(f"ONNX: {', '.join(plan['onnx'])} (onnxruntime-genai model builder)")
        with _timed(timings, "onnx"):
            artifacts.update(_write_onnx(merged_dir, staging / "onnx", plan["onnx"], timings))
    shutil.rmtree(staging / ".merged", ignore_errors=True)
    return artifacts


class _timed:
    def __init__(self, timings: dict, key: str):
        self.timings, self.key = timings, key

    def __enter__(self):
        self.started = time.perf_counter()

    def __exit__(self, *exc):
        self.timings[self.key] = round(time.perf_counter() - self.started, 2)


def _write_gguf(source: RunSource, merged_dir: Path, target: Path, quants: list[str], timings: dict) -> dict:
    target.mkdir(parents=True)
    artifacts = {}
    source_dir = Path(source.base_model)
    f16 = gguf.convert(merged_dir, target / "model-f16.gguf", "f16", source_dir)
    for quant in quants:
        path = target / f"model-{quant}.gguf"
        fallbacks = []
        with _timed(timings, f"gguf_{quant}"):
            if quant in gguf.CONVERTER_TYPES and quant != "f16":
                gguf.convert(merged_dir, path, quant, source_dir)
            elif quant != "f16":
                fallbacks = gguf.quantize(f16, path, quant)
        artifacts[f"gguf-{quant}"] = {"path": str(path.relative_to(target.parent)),
                                      **gguf.tensor_report(path, fallbacks)}
    if "f16" not in quants:
        f16.unlink()
    if source.is_lora:  # the forget patch: base GGUF + adapter GGUF applied at load time
        with _timed(timings, "gguf_lora"):
            base = gguf.convert(Path(source.base_model), target / "base-f16.gguf", "f16")
            patch = gguf.convert_lora(source.model_dir, Path(source.base_model), target / "forget-patch-f16.gguf",
                                      base)
        artifacts["gguf-lora"] = {"path": str(patch.relative_to(target.parent)),
                                  "base": str(base.relative_to(target.parent))}
    return artifacts


def _write_onnx(merged_dir: Path, target: Path, precisions: list[str], timings: dict) -> dict:
    artifacts = {}
    cache = target / ".builder-cache"
    for precision in precisions:
        with _timed(timings, f"onnx_{precision}"):
            onnx.build(merged_dir, target / precision, precision, cache)
        artifacts[f"onnx-{precision}"] = {"path": f"onnx/{precision}"}
    shutil.rmtree(cache, ignore_errors=True)
    return artifacts


# ---------------------------------------------------------------- checks

def open_runner(name: str, artifact: dict, bundle: Path):
    """The real runtime for one artifact of a bundle (also used by chat and the benchmark)."""
    if name == "hf":
        from core.models import load_model

        return hf.TorchRunner(load_model(str(bundle / artifact["path"])), name="hf")
    if name == "gguf-lora":
        return gguf.GGUFRunner(bundle / artifact["base"], lora_path=bundle / artifact["path"], name=name)
    if name.startswith("gguf-"):
        return gguf.GGUFRunner(bundle / artifact["path"], name=name)
    return onnx.OnnxRunner(bundle / artifact["path"], name=name)


def _check(source: RunSource, model, tokenizer, bundle: Path, artifacts: dict, parity_examples: int,
           forget: str | None, retain: str | None) -> dict:
    probes = parity.build_probes(source.config, tokenizer, parity_examples, forget, retain)
    reference = parity.run_probes(hf.TorchRunner(model), probes)
    forced = reference["tokens"]
    original_raw = parity.run_probes(hf.TorchRunner(load_original(source), name="original"), probes,
                                     forced=forced)
    unlearned = parity.summarise(reference, reference, probes, tokenizer)
    original = parity.summarise(original_raw, reference, probes, tokenizer)
    formats, raws = {}, {}
    for name, artifact in artifacts.items():
        runner = open_runner(name, artifact, bundle)
        try:
            raws[name] = parity.run_probes(runner, probes, forced=forced)
        finally:
            runner.close()
        formats[name] = parity.summarise(raws[name], reference, probes, tokenizer)
        goal = parity.goal_status(name, formats[name])
        if goal:
            formats[name]["goal"] = goal
    if "gguf-lora" in raws and "gguf-f16" in raws:  # the patch must act like the merged model
        formats["gguf-lora"]["vs_merged_f16"] = parity.summarise(raws["gguf-lora"], raws["gguf-f16"], probes,
                                                                 tokenizer)
    forgetting, warnings = parity.forgetting_check(formats, unlearned, original)
    return {"probes": {"forget": sum(p.role == "forget" for p in probes),
                       "retain": sum(p.role == "retain" for p in probes), "greedy_tokens": parity.GREEDY_TOKENS},
            "reference": "unlearned model in PyTorch fp32", "pytorch": unlearned, "original": original,
            "formats": formats, "forgetting": forgetting, "warnings": warnings}


# ---------------------------------------------------------------- audit

def run_audit(source: RunSource) -> dict | None:
    """The run's own audit (`unlearn audit RUN`, written to RUN/audit as docs/audit.md advises)."""
    return read_json(RunDir(source.run_dir).audit_report_path)


def audit_summary(audit: dict) -> dict:
    return {"overall": audit["overall"], "path": f"audit/{AUDIT_REPORT}",
            "attacks": {r["name"]: {"verdict": r["verdict"].split(":")[0], "worst_recovery": r["worst_recovery"]}
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
                           "base_model": source.base_model, "architecture": source.architecture,
                           "forget": source.config.get("forget"), "retain": source.config.get("retain"),
                           "summary": source.summary},
            "formats": plan["formats"], "gguf_quants": plan["gguf"], "onnx_precisions": plan["onnx"],
            "artifacts": artifacts, "metrics": metrics, "warnings": report["warnings"] if report else [],
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
