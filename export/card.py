"""The bundle's README.md: a Hugging Face model card saying what was unlearned, how, and the scores."""
from __future__ import annotations

import json

from core.evaluation.report import interval_text
from core.scoring import describe_scored_on

from .formats import formats
from .hubcard import front_matter
from .source import RunSource


def model_card(source: RunSource, manifest: dict, report: dict | None, audit: dict | None = None) -> str:
    parts = [front_matter(source, manifest, report, audit), "",
             f"# Unlearned model ({source.method})", "",
             _what_and_how(source), "", _scores(source.summary), ""]
    if report:
        parts += [_parity_table(report), ""]
        if report["warnings"]:
            parts += ["## Warnings", "", *(f"- **{w}**" for w in report["warnings"]), ""]
    if audit:
        parts += [_audit(audit), ""]
    parts += [_files(manifest), "", _usage(manifest)]
    return "\n".join(parts) + "\n"


def _what_and_how(source: RunSource) -> str:
    config = source.config
    data = config.get("data", {})
    forget_n = data.get("forget", {}).get("examples", "?")
    lines = ["## What was unlearned, and how", "",
             f"- forget set: `{config.get('forget')}` ({forget_n} examples)",
             f"- retain set: `{config.get('retain')}`" if config.get("retain") else "- retain set: none",
             f"- method: `{source.method}` ({(config.get('method_info') or {}).get('paper', '')}), "
             f"parameters {json.dumps(config.get('method_params') or {})}",
             f"- training: {'LoRA r=' + str(config.get('lora_r')) if source.is_lora else 'full fine-tuning'}, "
             f"lr {config.get('lr')}, {source.summary.get('steps', '?')} steps",
             f"- base model: `{source.base_model}`"]
    if source.base_quantization:
        lines.append(f"- the base was held in {source.base_quantization} while the adapter trained (QLoRA); the "
                     "adapter is merged into that base dequantised to fp32, the weights it was trained against")
    return "\n".join(lines)


def _scores(summary: dict) -> str:
    before, after = summary.get("before", {}), summary.get("after", {})
    rows = [f"| {key} | {before.get(key, float('nan')):.3f} | {after.get(key, float('nan')):.3f} |"
            for key in ("forget_nll", "retain_nll") if key in before or key in after]
    basis = f" over the {describe_scored_on(summary['scored_on'])}" if summary.get("scored_on") else ""
    header = [f"## Unlearning scores (answer-token NLL{basis}; higher on forget = more forgotten)", "",
              "| metric | before | after |", "|---|---|---|"]
    return "\n".join(header + (rows or ["| (no summary) | | |"]))


def _parity_table(report: dict) -> str:
    lines = ["## Parity and forgetting per format", "",
             f"{report['probes']['forget']} forget and {report['probes']['retain']} retain prompts, "
             f"{report['probes']['greedy_tokens']} greedy tokens each, against the unlearned PyTorch fp32 model."
             + (f" NLL over the {describe_scored_on(report['scored_on'])}; each artifact's in its own runtime."
                if report.get("scored_on") else ""), "",
             "Token agreement is teacher-forced (same next token on PyTorch's greedy run); greedy prefix is the "
             "share of PyTorch's greedy run reproduced before the first divergence.", "",
             "| format | identical runs | token agreement | greedy prefix | first-step max abs logit diff | "
             "forget NLL | retain NLL | forget ROUGE-L | recovers forgotten |", "|---|---|---|---|---|---|---|---|---|"]
    rows = {"pytorch (unlearned)": report["pytorch"], "original (before unlearning)": report["original"],
            **report["formats"]}
    for name, s in rows.items():
        recovered = report["forgetting"].get(name, {}).get("recovers_forgotten", "")
        ties = f" ({s['near_tie_flips']} of {s['flips']} flips near-ties)" if s.get("flips") else ""
        lines.append(f"| {name} | {s['identical_runs']}/{s['runs']}{ties} | {s['token_agreement']:.3f} | "
                     f"{s['greedy_prefix_agreement']:.3f} | {s['first_logits_max_abs_diff']:.2e} | {s.get('forget_nll', float('nan')):.3f} | "
                     f"{s.get('retain_nll', float('nan')):.3f} | {s.get('forget_rougeL', float('nan')):.3f} | "
                     f"{'YES' if recovered is True else 'no' if recovered is False else ''} |")
    return "\n".join(lines)


def _files(manifest: dict) -> str:
    lines = ["## Files", "", "| artifact | path |", "|---|---|"]
    lines += [f"| {name} | `{a['path']}` |" for name, a in manifest["artifacts"].items()]
    return "\n".join(lines)


def _usage(manifest: dict) -> str:
    """A chat command per artifact worth chatting with, then what each format's files load in."""
    present = [fmt for fmt in formats() if fmt.name in manifest["formats"]]
    commands = [line for fmt in present for line in fmt.card_lines(manifest["artifacts"])]
    lines = ["## Running it", "", "```bash", *commands, "```"]
    notes = [fmt.card_note for fmt in present if fmt.card_note]
    return "\n".join(lines + (["", " ".join(notes)] if notes else []))


def _audit(audit: dict) -> str:
    """The run's robustness audit: what each attack brought back, in plain words first."""
    restoring = [r for r in audit["results"] if r["verdict"].startswith(("shallow", "partial"))]
    lines = ["## Robustness audit (`unlearn audit`)", "",
             f"Overall: **{audit['overall']}**. Recovery = (attacked − unlearned) / (original − unlearned) of the "
             "forget answers' figures: 0 still forgotten, 1 fully restored; robust below 0.25, shallow above 0.5.", ""]
    if restoring:
        lines += [f"- **{r['name']} restores what was forgotten** (largest recovery {r['worst_recovery']:.2f}, "
                  f"{r['verdict'].split(':')[0]})." for r in restoring] + [""]
    elif any(r["verdict"].startswith("inconclusive") for r in audit["results"]):
        lines += ["No attack clearly restored what was forgotten, but some figures were too noisy to tell.", ""]
    else:
        lines += ["No attack restored more than a quarter of what was forgotten.", ""]
    if audit.get("control"):   # issue 31: the fine-tuning attacks also trained a never-learned control
        lines += [f"Control: `{audit['control']}`, a model that never learned the forget data, fine-tuned alike. "
                  "Residual = (control attacked − unlearned attacked) / (control attacked − original): 0 relearns "
                  "no faster than never having learned, 1 back to the original.", ""]
    lines += ["| attack | verdict | largest recovery [95 % interval] | largest residual [95 % interval] |",
              "|---|---|---|---|"]
    for r in audit["results"]:
        lines.append(f"| {r['name']} | {r['verdict'].split(':')[0]} | {_largest(r, 'recovery')} | "
                     f"{_largest(r, 'residual')} |")
    return "\n".join(lines + ["", "The whole report: `audit/audit.json`, `audit/audit.md`."])


def _largest(result: dict, kind: str) -> str:
    """An attack's largest recovery (or residual) over its figures, with that figure's interval when it has one
    (an unbounded end: '?')."""
    values = {f: v for f, v in (result.get(kind) or {}).items() if v is not None}
    if not values:
        return "-"
    figure = max(values, key=values.get)
    interval = (result.get(f"{kind}_interval") or {}).get(figure)
    return f"{values[figure]:.2f}" + (f" {interval_text(interval)}" if interval else "")
