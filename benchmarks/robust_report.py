"""docs/results/robust.{md,json,png} from benchmarks/robust.py's record: per method the chosen learning rate
and epoch, FQ and MU, the audit with control (each figure with its interval) and the step cost; the sweep
behind each choice; the issue's goal checked; residual after relearning against Model Utility."""
from __future__ import annotations

import math
import time
from pathlib import Path

from benchmarks.ledger import Ledger
from core.evaluation.report import interval_text
from benchmarks.robust_plans import (ATTACK_LRS, GOAL, MINI, REACH, SANITY, VARIANTS, choose, step_cost,
                                     sweep_settings, sweep_steps)
from benchmarks.tofu_report import clock

FOUR_BIT = ("quantize: gguf-q4_0", "quantize: gguf-q4_k_m")


def rows(ledger: Ledger) -> list[dict]:
    """One row per method with a complete sweep: its choice, figures, audit and cost."""
    steps = sweep_steps()
    baseline = next(v for v in VARIANTS if v.key == "npo_rt")
    found = []
    for variant in VARIANTS:
        curves = {lr: ledger.plan(sweep_settings(lr)).get("curves", {}).get(variant.key) for lr in variant.lrs}
        if any(points is None for points in curves.values()):
            found.append({"key": variant.key, "label": variant.label, "robust": variant.robust,
                          "swept": sorted(lr for lr, points in curves.items() if points)})
            continue
        choice = choose(variant, curves)
        point = next(p for p in curves[choice["lr"]] if p["epoch"] == choice["epoch"])
        target = curves[choice["lr"]][0]
        audit = ledger.data.get("audits", {}).get(variant.key)
        costs = step_cost(ledger, variant, baseline, steps)
        found.append({"key": variant.key, "label": variant.label, "robust": variant.robust, "choice": choice,
                      "fq": point["fq"], "mu": point["mu"], "mu_ratio": point["mu"] / target["mu"],
                      "sweep": {f"{lr:g}": _best_of(variant, points) for lr, points in curves.items()},
                      "audit": audit if audit and audit["choice"] == choice else None,
                      "step_cost": sum(costs.values()) / len(costs) if costs else None,
                      "step_cost_by_machine": costs})
    return found


def _best_of(variant, points: list[dict]) -> dict:
    from benchmarks.tofu_claims import best_point

    best = best_point([points[0], *variant.epochs(points)], points[0]["mu"])["evaluation"]   # points[0]: the target
    return {"epoch": best["epoch"], "fq": best["fq"], "mu_ratio": best["mu"] / points[0]["mu"]}


def figure(audit: dict | None, split: str, attack: str, kind: str = "residual") -> tuple[float | None, list | None]:
    """(NLL figure, its interval) of one attack in the audit."""
    result = ((audit or {}).get("splits", {}).get(split, {}).get("results", {}).get(attack)) or {}
    return (result.get(kind) or {}).get("nll"), (result.get(f"{kind}_interval") or {}).get("nll")


def relearn_residuals(audit: dict | None) -> list[tuple[float | None, list | None]]:
    """(NLL residual, its interval) after relearning, on the example split and on the group split."""
    return [figure(audit, split, "relearn") for split in ("example", "group")]


def _upper(found: tuple[float, list | None]) -> float:
    """The interval's upper bound; infinite where the bootstrap left it unbounded (a draw's denominator under
    the noise floor), the value itself for a figure measured once."""
    value, interval = found
    if not interval:
        return value
    return math.inf if interval[1] is None else interval[1]


ATTACK_RATES = [float(lr) for lr in ATTACK_LRS.split(",")]
TRAINED = (("example", "relearn", "relearn by example"), ("group", "relearn", "relearn by author"),
           ("example", "benign", "benign"))


def at_the_highest_rate(audit: dict | None) -> list[str]:
    """The fine-tuning attacks of an audit whose worst case came at the highest attack learning rate tried,
    after the sweep's reach (a sweep reaching further up might be stronger), each with that rate."""
    from audit.recovery import at_edge

    splits = (audit or {}).get("splits", {})
    found = []
    for split, attack, name in TRAINED:
        result = splits.get(split, {}).get("results", {}).get(attack) or {}
        if "lr" not in result:
            continue
        edge = result["at_edge"] if "rates" in result else at_edge(result["lr"], ATTACK_RATES)   # older records
        if edge == "highest":
            found.append(f"{name} at {result['lr']:g}")
    return found


def four_bit(audit: dict | None) -> float | None:
    values = [figure(audit, "example", name, "recovery")[0] for name in FOUR_BIT]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def meets_goal(row: dict) -> bool | None:
    """The issue's goal: relearn residual <= 0.25 with its interval on both splits (a split not measured, or
    undefined, does not pass), 4-bit recovery <= 0.10, FQ >= 0.1, MU >= 0.9x the target's. None while the row
    lacks its audit."""
    if "choice" not in row or row["audit"] is None:
        return None
    quantized = four_bit(row["audit"])
    return (all(value is not None and _upper((value, interval)) <= GOAL["residual"]
                for value, interval in relearn_residuals(row["audit"]))
            and quantized is not None and quantized <= GOAL["quantized"] and (row["fq"] or 0) >= GOAL["fq"]
            and row["mu_ratio"] >= GOAL["mu_ratio"])


def cell(value: float | None, interval: list | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if not interval else f"{value:.2f} {interval_text(interval)}"


def markdown(found: list[dict], ledger: Ledger) -> str:
    from core.evaluation.report import table

    head = ["method", "lr, epoch", "FQ", "MU / target", "relearn residual (example)", "relearn residual (group)",
            "benign residual", "4-bit recovery (q4_0 / q4_k_m)", "rephrase recovery", "verdict", "step cost",
            "goal"]
    lines, pending = [], []
    for row in found:
        if "choice" not in row:
            pending.append(f"{row['label']} (swept: {', '.join(f'{lr:g}' for lr in row['swept']) or 'nothing'})")
            continue
        audit = row["audit"]
        goal = meets_goal(row)
        lines.append([row["label"] + (" (robust)" if row["robust"] else ""),
                      f"{row['choice']['lr']:g}, {row['choice']['epoch']}", f"{row['fq']:.3g}",
                      f"{row['mu_ratio']:.2f}", cell(*figure(audit, "example", "relearn")),
                      cell(*figure(audit, "group", "relearn")), cell(*figure(audit, "example", "benign")),
                      four_bit_cells(audit), cell(*worst_rephrasing(audit)),
                      (audit or {}).get("splits", {}).get("example", {}).get("overall", "not audited yet"),
                      "-" if row["step_cost"] is None else f"{row['step_cost']:.2f}x",
                      "-" if goal is None else ("**met**" if goal else "no")])
    sweep = [[row["label"]] + [f"{lr}: FQ {s['fq']:.3g}, MU {s['mu_ratio']:.2f}x (ep {s['epoch']})"
                               for lr, s in row["sweep"].items()] + ["-"] * (3 - len(row["sweep"]))
             for row in found if "choice" in row]
    met = [row["label"] for row in found if meets_goal(row)]
    audited = [row for row in found if row.get("audit")]
    return "\n".join([
        "# Forgetting that lasts: which method survives its own audit?", "",
        f"{time.strftime('%Y-%m-%d')}, `python benchmarks/robust.py` on 2-core CPUs (fp32; the machines are "
        "listed below the table); "
        f"wall time so far over every machine: {clock(ledger.data.get('wall_seconds', 0))}. Protocol and choices: "
        "the docstring of benchmarks/robust.py. Each method unlearns TOFU authors 198-199 from the 20-author "
        "target at three learning rates (GA, GradDiff, WGA, SatImp, CE-U and PDU, the audit's other rows, at the "
        "protocol's one, 5e-5, their final model); the best-checkpoint rule (highest FQ with MU >= 0.9x the target's) "
        "picks one learning rate and epoch (NPO+WA: its final model, the weight average, only), which is audited "
        "with the 18-author retain model (never saw authors 198-199) as the control: the example split on 20 forget answers (10 relearned, 10 measured) with 3 "
        "seeds, the group split on all 40 (one author's 20 relearned, the other's 20 measured) with 2; every "
        "fine-tuning attack at the same three learning "
        f"rates for every method ({ATTACK_LRS.replace(',', ', ')}), reaching up to {REACH} steps (x3) further "
        "where the attacker did best at an end, tried on the first seed, the other seeds "
        "repeating the attacker's best one (shown; the attacker's best: the rate whose residual interval reaches "
        "highest, then the largest residual).", "",
        "Residual (docs/audit.md) = (control attacked − unlearned attacked) / (control attacked − original): 0 "
        "relearns no faster than a model that never learned the facts, 1 back to the original; "
        "[95 % bootstrap interval over answers and seeds]. 4-bit and rephrasing train nothing: their recovery "
        "[interval over the answers]; rephrasing: the prompt that brought back the most. On this model llama.cpp's "
        "q4_k_m file is not 4-bit for most weights: rows of 576 are not a multiple of 256, so its q4_K falls back "
        "to q5_0 and its q6_K to q8_0; only the MLP's down projection is q4_K / q6_K (core/ggml_formats.py). "
        "Step cost: CPU seconds per step of the method's runs over NPO+RT's on the same machine (per machine the "
        "median of its runs, as a resumed or crowded run misreports; the mean over machines where runs were timed "
        "on more than one; robust.json has each).", "",
        f"**The goal** (relearn residual <= {GOAL['residual']} with its interval, both splits; 4-bit recovery <= "
        f"{GOAL['quantized']}; FQ >= {GOAL['fq']}; MU >= {GOAL['mu_ratio']}x the target's): "
        + (f"met by {', '.join(met)}." if met else
           f"not met by any of the {len(audited)} method(s) audited so far."), "",
        table(head, lines) if lines else "No method has a complete sweep yet.", "",
        *edge_note(found),
        *([f"Not measured yet: {'; '.join(pending)}.", ""] if pending else []),
        *provenance(ledger),
        *sanity_section(ledger),
        "## The sweep behind each choice (each learning rate's best epoch)", "",
        table(["method", *[f"lr {i + 1}" for i in range(3)]], sweep) if sweep else "-", "",
        "![relearn residual against Model Utility](robust.png)", ""])


def provenance(ledger: Ledger) -> list[str]:
    """Which machines measured the record, each time one learned the target again, and each learning rate
    measured again because a later machine lacked its weights (the curve it replaced stays in the record)."""
    from benchmarks.tofu_report import relearned_note

    machines = sorted({name for stage in ledger.data["stages"].values() for name in stage.get("machines", {})})
    lines = [f"Measured on: {'; '.join(machines)}.", ""] if machines else []
    notes, again = {}, []
    for variant in VARIANTS:
        for lr in variant.lrs:
            record = ledger.plan(sweep_settings(lr))
            notes.update({note["target_weights"]: note for note in record.get("relearned", [])})
            again += [f"{variant.label} at lr {lr:g} on {entry['replaced']}"
                      for entry in record.get("superseded", {}).get(variant.key, [])]
    lines += [line for note in notes.values() for line in (relearned_note(note), "")]
    if again:
        lines += ["Measured again on a machine that lacked the chosen weights (the earlier curve stays in the "
                  f"record): {'; '.join(again)}.", ""]
    return lines


def edge_note(found: list[dict]) -> list[str]:
    """Which rows' attackers did best at the highest learning rate tried, where the sweep may stop short."""
    at_edge = [f"{row['label']} ({', '.join(names)})" for row in found if row.get("audit")
               for names in [at_the_highest_rate(row["audit"])] if names]
    if not at_edge:
        return []
    return [f"The attacker did best at the highest learning rate tried for: {'; '.join(at_edge)}. A sweep "
            "reaching further up might find a stronger attack there.", ""]


AUDIT_COLUMNS = ["relearn residual (example)", "relearn residual (group)", "benign residual",
                 "4-bit recovery (q4_0 / q4_k_m)", "control learns (example)", "control learns (group)", "verdict"]


def audit_cells(audit: dict) -> list[str]:
    """One audit's figures in AUDIT_COLUMNS' order."""
    return [cell(*figure(audit, "example", "relearn")), cell(*figure(audit, "group", "relearn")),
            cell(*figure(audit, "example", "benign")),
            four_bit_cells(audit), control_learns(audit, "example"), control_learns(audit, "group"),
            audit.get("splits", {}).get("example", {}).get("overall", "-")]


def sanity_section(ledger: Ledger) -> list[str]:
    """The audit's sanity rows: the target (residual ~1: it still knows) and the control itself (exactly 0), each
    audited as the unlearned model; what the control learns from the attack on its own; the mini-TOFU run."""
    from core.evaluation.report import table

    found = ledger.data.get("sanity", {})
    lines = [[SANITY[key], *audit_cells(audit)] for key, audit in found.items()]
    mini = ledger.data.get(MINI)
    return ["## Sanity rows: the target and the control audited as if unlearned", "",
            "By construction the target's relearn residual is about 1 (it never forgot) and the control's is 0 "
            "(it is attacked exactly as the control is). \"Control learns\": the control's forget NLL before and "
            "after the relearn attack (at the learning rate that judged): what a model that never saw the "
            "authors learns about the measured answers from the relearned ones. The control's 4-bit recovery is "
            "that figure's noise: how far quantising alone moves the forget NLL of a model that never learned "
            "the authors, read against the target. Verdict: the example split's overall one, which includes the "
            "attacks that train nothing (their recovery, not a residual: the control does not pin them, and for "
            "the control their wide intervals over 20 answers can leave it inconclusive).", "",
            table(["audited as the unlearned model", *AUDIT_COLUMNS], lines) if lines else "Not measured yet.", "",
            "## The mini-TOFU NPO+RT run, audited again with its control", "",
            "tofu_mini.py's plan mini-lr5e-5 (authors 198-199 unlearned by NPO+RT at 5e-5 from a target that "
            "learned authors 0-9 too), its final model, against that plan's retain model (authors 0-9 only); "
            "audited before without a control (docs/results/audit_mini_npo_rt.json).", "",
            table(["run", *AUDIT_COLUMNS], [["mini-TOFU NPO+RT", *audit_cells(mini)]]) if mini else
            "Not measured yet.", ""]


def control_learns(audit: dict | None, split: str) -> str:
    """The control's forget NLL before -> after the relearn attack of that split."""
    result = ((audit or {}).get("splits", {}).get(split, {}).get("results", {}).get("relearn")) or {}
    forget = result.get("forget") or {}
    before, after = ((forget.get(stage) or {}).get("nll") for stage in ("control", "control_attacked"))
    return "-" if before is None or after is None else f"{before:.2f} -> {after:.2f}"


def four_bit_cells(audit: dict | None) -> str:
    """q4_0 / q4_k_m recovery, each with its interval over the answers (audits from before it had none)."""
    return " / ".join(cell(*figure(audit, "example", name, "recovery")) for name in FOUR_BIT)


def worst_rephrasing(audit: dict | None) -> tuple[float | None, list | None]:
    """(NLL recovery, its interval) of the prompt that brought back the most."""
    results = (audit or {}).get("splits", {}).get("example", {}).get("results", {})
    found = [figure(audit, "example", name, "recovery") for name in results if name.startswith("rephrase")]
    return max((f for f in found if f[0] is not None), key=lambda f: f[0], default=(None, None))


def plot(found: list[dict], path: Path) -> None:
    """Relearn residual against Model Utility, one colour per method: the example split filled, the group
    split (independent facts) hollow, each with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    audited = [row for row in found if row.get("audit")]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for number, row in enumerate(audited):
        colour = f"C{number % 10}"
        for split, filled in (("example", True), ("group", False)):
            residual, interval = figure(row["audit"], split, "relearn")
            if residual is None:
                continue
            low, high = interval if interval else (residual, residual)
            errors = [[residual - (low if low is not None else residual)],
                      [(high if high is not None else residual) - residual]]
            ax.errorbar(row["mu_ratio"] + (0.0 if filled else 0.002), residual, yerr=errors,
                        fmt="o" if row["robust"] else "s", capsize=3, color=colour,
                        markerfacecolor=colour if filled else "white",
                        label=f"{row['label']} (lr {row['choice']['lr']:g}, ep {row['choice']['epoch']})"
                        if filled else None)
    ax.axhline(GOAL["residual"], color="grey", linestyle=":", linewidth=1)
    ax.axvline(GOAL["mu_ratio"], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("Model Utility / target's")
    ax.set_ylabel("relearn residual (NLL)")
    ax.set_title("After the attacker's best relearning (filled: by example, hollow: by author)", fontsize=10)
    if audited:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def relearn_verdicts(audit: dict | None) -> dict[str, str]:
    """split -> the relearn attack's verdict there, for the splits audited."""
    splits = (audit or {}).get("splits", {})
    return {split: found["results"]["relearn"]["verdict"] for split, found in splits.items()
            if "relearn" in found.get("results", {})}


def relearning_outcome(audit: dict | None) -> str:
    """What relearning did to one method, once the control is subtracted, by the weaker split (audit/recovery.py's
    order): "undone" (shallow on some split), "robust" (robust on both), "partial" (partial on some split, the
    other at most an interval spanning only 0.25), or "not decided" (an interval that may reach the next level
    up, or a split missing)."""
    from audit.recovery import overall

    verdicts = relearn_verdicts(audit)
    weakest = overall(verdicts)
    if weakest == "shallow":
        return "undone"
    if len(verdicts) < 2 or weakest in ("inconclusive", "undefined"):
        return "not decided"
    return weakest


OUTCOMES = {"undone": "relearning undoes it (a residual interval above 0.5 on some split)",
            "partial": "partly (every interval at or below 0.5, some at or above 0.25)",
            "not decided": "not decided (an interval spans 0.5, or spans 0.25 where no other is partial)",
            "robust": "robust on both splits (every interval below 0.25)"}
SUMMARY_START, SUMMARY_END = "<!-- robust.py summary: start -->", "<!-- robust.py summary: end -->"


def audit_summary(found: list[dict], ledger: Ledger) -> str:
    """docs/results/audit.md's summary of the audits with control: per method the figures of robust.md's table
    that the audit gives, and whether relearning still undoes it once the control is subtracted."""
    from audit.recovery import verdict_label
    from core.evaluation.report import table

    audited = [row for row in found if row.get("audit")]
    by_outcome = {outcome: [row["label"] for row in audited if relearning_outcome(row["audit"]) == outcome]
                  for outcome in OUTCOMES}
    control = ledger.data.get("sanity", {}).get("control")   # its relearn results hold what the control learns
    lines = [[row["label"], cell(*figure(row["audit"], "example", "relearn")),
              cell(*figure(row["audit"], "group", "relearn")), cell(*figure(row["audit"], "example", "benign")),
              four_bit_cells(row["audit"]), cell(*worst_rephrasing(row["audit"])),
              " / ".join(verdict_label(v) for v in relearn_verdicts(row["audit"]).values()),
              row["audit"]["splits"].get("example", {}).get("overall", "-")] for row in audited]
    return "\n".join([
        SUMMARY_START,
        f"Written by `python benchmarks/robust.py --report` ({time.strftime('%Y-%m-%d')}) from the record "
        f"behind [robust.md](robust.md): {len(audited)} of {len(found)} methods audited with the control so far.", "",
        "**Does relearning still undo them once the control is subtracted?** "
        + "; ".join(f"{text}: {', '.join(by_outcome[o]) or 'none'}" for o, text in OUTCOMES.items()) + ".", "",
        "**What the control itself learns** from the same relearning (its forget NLL on the measured answers, "
        f"before -> after): {control_learns(control, 'example')} by example, {control_learns(control, 'group')} by "
        "author." if control else "The control's own figures: not measured yet.", "",
        table(["method", "relearn residual (example)", "relearn residual (group)", "benign residual",
               "4-bit recovery (q4_0 / q4_k_m)", "rephrase recovery", "relearn verdict (example / group)",
               "overall (example split)"], lines) if lines else "No method audited yet.",
        SUMMARY_END])


def refresh_summary(path: Path, summary: str) -> None:
    """Put `summary` between the markers in `path` (a file without them is left as it is)."""
    from core.runs import write_text_atomic

    text = path.read_text() if path.is_file() else ""
    if SUMMARY_START not in text or SUMMARY_END not in text:
        return
    head, rest = text.split(SUMMARY_START, 1)
    write_text_atomic(path, head + summary + rest.split(SUMMARY_END, 1)[1])


def write_report(ledger: Ledger, folder: Path) -> str:
    from core.runs import write_json_atomic, write_text_atomic

    found = rows(ledger)
    text = markdown(found, ledger)
    write_json_atomic(folder / "robust.json", {"rows": found, "goal": GOAL,
                                               "wall_seconds": ledger.data.get("wall_seconds", 0)})
    write_text_atomic(folder / "robust.md", text)
    plot(found, folder / "robust.png")
    refresh_summary(folder / "audit.md", audit_summary(found, ledger))
    return text

