"""Mini-TOFU's report: the markdown (claims, tables, provenance, time per stage), the figure (Forget Quality
and Model Utility against epochs, one line per method, its style from the method registry) and the JSON."""
from __future__ import annotations

import json
import zlib
from pathlib import Path

from benchmarks.ledger import Ledger
from benchmarks.tofu_claims import best_points, expectations, headline_claims
from benchmarks.tofu_plans import label


def write_report(results: list[dict], ledger: Ledger, wall: float, device: str, folder: Path, stem: str,
                 one_row_per_size: bool) -> str:
    """Write STEM.json (every figure), STEM.md (returned) and STEM.png (the figure) into `folder`."""
    (folder / f"{stem}.json").write_text(json.dumps(
        {"device": device, "wall_seconds": round(wall, 1), "results": results,
         "best": [{m: {"epoch": b["evaluation"]["epoch"], "meets_floor": b["meets_floor"], "rule": b["rule"]}
                   for m, b in best_points(r).items()} for r in results]}, indent=2))
    headline = headline_claims(results)
    text = "\n".join((["# The NPO paper's headline: forget 10 % and 50 %", "", *headline, ""] if headline else [])
                     + [markdown(r, wall, device) for r in results] + [stage_table(ledger)])
    (folder / f"{stem}.md").write_text(text)
    plot(results, folder / f"{stem}.png", one_row_per_size)
    return text


def require_plotting() -> None:
    """The figure is drawn when a run that may take hours ends: check for its library before the first stage."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("matplotlib is missing (the benchmarks draw their figures with it); install it with: "
                         "bash scripts/setup.sh --bench") from None


def markdown(result: dict, wall: float, device: str) -> str:
    from core.evaluation.report import table

    plan = result["plan"]
    target_mu = result["target"]["mu"]
    best = best_points(result)
    header = ["model", "epoch", "FQ", "MU", "MU / target", "forget ROUGE", "forget fluency", "retain fluency",
              "MIA AUC", "PrivLeak %"]

    def row(name, epoch, p):
        return [name, epoch, p["fq"], p["mu"], p["mu"] / target_mu, p["forget_rouge"], p["forget_fluency"],
                p["retain_fluency"], p.get("mia_auc"), p.get("privleak")]

    final = [row("target (before)", "-", result["target"]), row("retain (ideal)", "-", result["retain"])]
    final += [row(label(m), pts[-1]["epoch"], pts[-1]) for m, pts in result["curves"].items()]
    chosen = [row(label(m) + ("" if b["meets_floor"] else " (below floor)"), b["evaluation"]["epoch"],
                  b["evaluation"]) for m, b in best.items()]
    rule = next(iter(best.values()))["rule"] if best else ""
    return "\n".join([
        f"# Mini-TOFU: {plan['name']}", "",
        f"Device: {device}. Wall time: {clock(wall)} (every invocation that measured these results, on every "
        f"machine, learning again included). Settings: {json.dumps(plan)}", "",
        *provenance(result),
        "## The NPO paper's claims, measured", "", *expectations(result), "",
        "## After the last epoch", "", table(header, final), "",
        "## Best checkpoint per method", "", f"Rule: {rule}.", "", table(header, chosen), "",
    ])


def provenance(result: dict) -> list[str]:
    """What is not measured yet, and each time a fresh machine learned the target again to other weights
    (the methods recorded before started from the first ones)."""
    lines = []
    missing = [label(m) for m in result["plan"]["methods"] if m not in result["curves"]]
    if missing:
        lines += [f"**Partial: not measured yet: {', '.join(missing)}.**", ""]
    for note in result.get("relearned", []):
        lines += [relearned_note(note), ""]
    return lines


def relearned_note(note: dict) -> str:
    """One time a fresh machine learned the target again (a Ledger.keep_models note), in a sentence."""
    return (f"The target was learned again on {note['date']} (a fresh machine; other weights): "
            + ("its figures came out identical." if not note["target"] else
               "its figures that changed: " + ", ".join(f"{figure} {_six(then)} -> {_six(now)}"
                                                         for figure, (then, now) in note["target"].items()) + "."))


def _six(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


# matplotlib's ten-colour cycle (the colours the first reports used) but its grey C7, the reference lines'
# colour; then colours none of it resembles: one each for today's registered methods (the markers tell apart
# any colour a later method repeats)
PALETTE = tuple(f"C{i}" for i in range(10) if i != 7) + ("navy", "lime", "maroon", "gold", "teal", "salmon",
                                                           "darkviolet")
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "d")   # a dozen lines: some colours are close


def method_style(method: str) -> dict:
    """One colour and one marker per method in every panel and every report, by the method's place among the
    registry's names (sorted: the same whatever order they register in); the marker keeps lines of close
    colours apart. A name the registry does not list (a test double, a method kept elsewhere) gets a style
    from a checksum of its name: the same in every run, never an error."""
    from core.methods import unlearning_methods

    registered = list(unlearning_methods())
    index = registered.index(method) if method in registered else zlib.crc32(method.encode())
    return {"color": PALETTE[index % len(PALETTE)], "marker": MARKERS[index % len(MARKERS)]}


def panel_rows(results: list[dict], one_row_per_size: bool) -> list[tuple[dict, list[tuple[str, str, str, list]]]]:
    """The figure's rows: (the result whose panels they are, its lines as (method, label, line style, points)).
    One row per plan; with `one_row_per_size`, a plan learned in another (the same models and forget size at
    another learning rate) is drawn dashed in that plan's panels, and a method drawn at several rates names
    its rate in the label."""
    names = {r["plan"]["name"] for r in results}
    owners = {r["plan"]["name"]: (r["plan"].get("learned_in") if one_row_per_size and r["plan"].get("learned_in")
                                  in names else r["plan"]["name"]) for r in results}
    lines: dict[str, list] = {name: [] for name in owners.values()}
    for r in results:
        owner = owners[r["plan"]["name"]]
        style = "-" if owner == r["plan"]["name"] else "--"
        lines[owner] += [(method, r["plan"]["unlearn_lr"], style, points) for method, points in r["curves"].items()]
    rows = []
    for r in results:
        if r["plan"]["name"] in lines:
            drawn = lines[r["plan"]["name"]]
            repeated = {m for m, *_ in drawn if sum(other == m for other, *_ in drawn) > 1}
            rows.append((r, [(m, f"{label(m)} (lr {lr:g})" if m in repeated else label(m), style, points)
                             for m, lr, style, points in drawn]))
    return rows


def plot(results: list[dict], path: Path, one_row_per_size: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = panel_rows(results, one_row_per_size)
    fig, axes = plt.subplots(len(rows), 2, figsize=(12, 3.6 * len(rows)), squeeze=False)
    for (result, lines), (ax_fq, ax_mu) in zip(rows, axes):
        for method, legend, linestyle, points in lines:
            epochs = [p["epoch"] for p in points]
            style = dict(label=legend, linestyle=linestyle, **method_style(method))
            ax_fq.plot(epochs, [max(p["fq"], 1e-30) for p in points], **style)
            ax_mu.plot(epochs, [p["mu"] for p in points], **style)
        ax_fq.set_yscale("log")
        for ax in (ax_fq, ax_mu):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_fq.axhline(0.1, color="grey", linestyle=":", linewidth=1)
        ax_mu.axhline(result["target"]["mu"], color="black", linestyle="--", linewidth=1, label="target")
        ax_mu.axhline(0.9 * result["target"]["mu"], color="grey", linestyle=":", linewidth=1, label="0.9 x target")
        name = result["plan"]["name"]
        ax_fq.set(title=f"{name}: forget quality", xlabel="epoch", ylabel="forget quality (KS p-value)")
        ax_mu.set(title=f"{name}: model utility", xlabel="epoch", ylabel="model utility")
        ax_mu.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))   # beside: a dozen lines
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def stage_table(ledger: Ledger) -> str:
    """Each stage's wall and CPU time, summed over the invocations (and machines) that ran it."""
    from core.evaluation.report import table

    stages = ledger.data["stages"]
    if not stages:
        return ""
    rows = [[name, clock(t["wall"]), clock(t["cpu"]), t["invocations"]] for name, t in stages.items()]
    rows.append(["total", clock(sum(t["wall"] for t in stages.values())),
                 clock(sum(t["cpu"] for t in stages.values())), ""])
    return "\n".join(["## Time per stage", "",
                      table(["stage (under the runs folder)", "wall time", "CPU time (2 cores: up to 2x wall)",
                             "invocations"], rows), ""])


def clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"

