"""audit.md: the verdicts, every figure with its 95 % interval, and every point of the fine-tuning sweeps."""
from __future__ import annotations

from core.evaluation.report import interval_text

from . import recovery

FIGURE_NAMES = {"nll": "NLL", "prob": "prob.", "rougeL": "ROUGE-L"}


def with_interval(value: float | None, interval: list | None):
    """'0.6200 [0.41, 0.80]' (a None bound: unbounded, '?'); the bare value without an interval."""
    if value is None or not interval:
        return value
    return f"{value:.4f} {interval_text(interval)}"


def _figures(result: dict, kind: str) -> list:
    values, intervals = result.get(kind) or {}, result.get(f"{kind}_interval") or {}
    return [with_interval(values.get(f), intervals.get(f)) for f in recovery.FIGURES]


def judged_by(report: dict) -> str:
    """How the verdicts were reached, in one sentence."""
    if report.get("control"):
        return (f"Judged by the **residual** against the never-learned control `{report['control']}` (every "
                "fine-tuning attack trained it alike): residual = (control attacked − unlearned attacked) / "
                "(control attacked − original), 0: relearns no faster than a model that never learned the facts, "
                "1: back to the original. Quantisation and rephrasing train nothing, so they keep the recovery.")
    return ("Judged by the **recovery** (no control): recovery = (attacked − unlearned) / (original − unlearned); "
            "a model that never learned the facts might gain as much from the same attack: pass --control to "
            "tell the two apart.")


def markdown(report: dict) -> str:
    from core.evaluation.report import table

    control = bool(report.get("control"))
    rows = []
    for r in report["results"]:
        f = r["forget"]
        row = [r["name"], recovery.verdict_label(r["verdict"]), r["worst_recovery"], *_figures(r, "recovery"),
               f["original"].get("nll"), (f.get("attacked_original") or {}).get("nll"),
               f["unlearned"].get("nll"), f["attacked"].get("nll"), (r.get("retain_change") or {}).get("nll")]
        if control:
            row += [*_figures(r, "residual"), (f.get("control_attacked") or {}).get("nll")]
        rows.append(row)
    header = ["attack", "verdict", "worst recovery", "NLL recovery", "prob. recovery", "ROUGE-L recovery",
              "forget NLL original", "original asked so (rephrasing)", "unlearned", "attacked", "retain NLL change"]
    if control:
        header += ["NLL residual", "prob. residual", "ROUGE-L residual", "control attacked NLL"]
    seeds = report.get("seeds", 1)
    return "\n".join([
        f"# Audit of {report['run']} ({report['method']})", "",
        f"Overall: **{report['overall']}**. {judged_by(report)} Each attack: robust when every figure's 95 % "
        f"interval lies below {recovery.ROBUST}, shallow when one lies above {recovery.SHALLOW}, partial between, "
        "inconclusive when an interval spans a threshold. A fine-tuning attack tries every learning rate and "
        "shows its worst one (the attacker's best shot: the weakest verdict, then the largest figure), averaged over "
        f"{seeds} seed{'s' if seeds != 1 else ''}{_where_seeds(report)}; [low, high]: the percentile bootstrap 95 % "
        "interval over the "
        "measured examples and the seeds. Rephrasing sets each prompt against the original model asked the same "
        "way (docs/audit.md); '-' where the figure moved too little to measure.", "",
        table(header, rows), "", *_barely_forgotten_lines(report["results"]), *_sweep_section(report["results"], control),
        f"Models scored in {report.get('dtype', 'float32')}{_scored_on(report)}. Wall time {report['wall_seconds']} s.",
        *_options_line(report.get("options")), ""])


def barely_forgotten_note(result: dict) -> str | None:
    """Why a shallow or partial verdict says little when unlearning hardly moved the model (None otherwise)."""
    if not recovery.barely_forgotten(result):
        return None
    nll = with_interval(result["forgotten"].get("nll"), (result.get("forgotten_interval") or {}).get("nll"))
    share = "" if nll is None else f" (forget NLL: {nll if isinstance(nll, str) else f'{nll:.4f}'})"
    return (f"{result['name']}: before any attack the unlearned model was less than halfway from the original to "
            f"the control on every figure{share}: it had barely forgotten, so its residual says it still knows the "
            "facts, not that the attack brought them back. Unlearn further (more steps, a higher learning rate) "
            "before judging robustness.")


def _barely_forgotten_lines(results: list[dict]) -> list[str]:
    notes = [note for note in map(barely_forgotten_note, results) if note]
    return [f"**Barely forgotten.** {note}\n" for note in notes]


def _scored_on(report: dict) -> str:
    """What the NLL figures were computed on (core.scoring.scored_on); audits written before it say less."""
    from core.scoring import describe_scored_on

    basis = report.get("scored_on")
    return f" over the {describe_scored_on(basis)} (rephrasing: its own prompts)" if basis else ""


def _sweep_section(results: list[dict], control: bool) -> list[str]:
    """Every learning rate of every fine-tuning attack, with its own verdict."""
    from core.evaluation.report import table

    rows = []
    for r in results:
        for entry in r.get("sweep", []):
            row = [r["name"], f"{entry['lr']:.3g}", ", ".join(map(str, entry["seeds"])), recovery.verdict_label(entry["verdict"]),
                   *_figures(entry, "recovery")]
            rows.append(row + (_figures(entry, "residual") if control else []))
    if not rows:
        return []
    header = ["attack", "learning rate", "seeds", "verdict", "NLL recovery", "prob. recovery", "ROUGE-L recovery"]
    header += ["NLL residual", "prob. residual", "ROUGE-L residual"] if control else []
    splits = [f"{r['name']}: {r['split']} split" for r in results if r.get("split")]
    edges = [f"{r['name']}: the attacker did best at the {r['at_edge']} learning rate tried ({r['lr']:.3g}), so a "
             f"sweep reaching further {'up' if r['at_edge'] == 'highest' else 'down'} might find a stronger attack."
             for r in results if r.get("at_edge")]
    return ["## Every learning rate", "", table(header, rows), "",
            *([f"Relearn split: {'; '.join(splits)}.", ""] if splits else []), *[line + "\n" for line in edges]]


def _options_line(options: dict | None) -> list[str]:
    """The attacks' options the audit ran with, one clause per attack (none for an audit without options)."""
    if not options:
        return []
    clauses = [f"{attack}: " + ", ".join(f"{name} {_text(value)}" for name, value in values.items())
               for attack, values in options.items()]
    return ["", f"Attack options: {'; '.join(clauses)}."]


def _text(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _where_seeds(report: dict) -> str:
    if report.get("seeds_at") != "worst" or report.get("seeds", 1) == 1:
        return ""
    return (" (the learning rates tried on the first seed, the other seeds only at the worst one: the other "
            "learning rates have one seed each)")
