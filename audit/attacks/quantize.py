"""Quantisation (Zhang et al., ICLR 2025): the run exported as the formats users ship, GGUF q8_0 / q4_k_m /
q4_0 through llama.cpp and ONNX int4 where the builder takes the model, each run in its own runtime. This is
`unlearn export`'s own parity and forgetting check (export/parity.py) on the audit's forget and retain
examples, so the audit and a bundle's parity report give the same numbers: its nll_recovery is this
audit's NLL recovery. The parity report's per-prompt figures give each recovery its interval over the prompts."""
from __future__ import annotations

from export.bundle import export_run, refusals
from export.source import read_run

from .base import Attack, register_attack
from .finetune import write_examples

GGUF_QUANTS = ("q8_0", "q4_k_m", "q4_0")


@register_attack
class Quantize(Attack):
    name = "quantize"
    summary = "export to GGUF q8_0 / q4_k_m / q4_0 and ONNX int4, measure each in its runtime"
    order = 30
    slow = True     # four exports, each measured in its own runtime

    def run(self, context):
        refused = refusals(read_run(context.run))
        formats = [fmt for fmt in ("gguf", "onnx") if fmt not in refused]
        for fmt, why in refused.items():
            context.log(f"quantize: no {fmt} ({why})")
        if not formats:
            return []
        forget = write_examples(context.forget, context.work / "forget.jsonl")
        retain = write_examples(context.retain, context.work / "retain.jsonl") if context.retain else None
        count = max(len(context.forget), len(context.retain or []))
        context.log(f"quantize: exporting {', '.join(formats)} (llama.cpp and onnxruntime-genai)")
        export_run(context.run, context.work / "bundle", formats=formats, gguf_quants=GGUF_QUANTS,
                   onnx_precisions=("int4",), parity_examples=count, forget=str(forget),
                   retain=str(retain) if retain else None, log=lambda message: None)
        import json

        report = json.loads((context.work / "bundle" / "parity.json").read_text())
        original, unlearned = report["original"], report["pytorch"]
        results = []
        for name, scores in report["formats"].items():
            if name in ("hf", "gguf-f16", "gguf-lora") or "forget_nll" not in scores:
                continue
            result = {"name": f"quantize: {name}", "nll_recovery_in_parity": report["forgetting"].get(name, {}).get("nll_recovery"),
                      "forget": {"set": "forget", "original": _figures(original, "forget"),
                                 "unlearned": _figures(unlearned, "forget"), "attacked": _figures(scores, "forget")},
                      "forget_each": {stage: of["per_example"]["forget"] for stage, of in
                                      (("original", original), ("unlearned", unlearned), ("attacked", scores))}}
            if "retain_nll" in scores:
                result["retain"] = {"original": _figures(original, "retain"), "unlearned": _figures(unlearned, "retain"),
                                    "attacked": _figures(scores, "retain")}
            results.append(result)
        return results


def _figures(scores: dict, role: str) -> dict:
    figures = {"nll": scores.get(f"{role}_nll")}
    if f"{role}_rougeL" in scores:
        figures["rougeL"] = scores[f"{role}_rougeL"]
    return {k: v for k, v in figures.items() if v is not None}
