"""Mini-TOFU's statistics and claims: the best checkpoint per method, Forget Quality over a matched number of
answers, and the NPO paper's claims checked on a result's numbers, each line stating its own rule."""
from __future__ import annotations

from benchmarks.tofu_plans import label


def forget_quality_over(ratios: list[float], retain: list[float] | None) -> float | None:
    """Forget Quality from the forget answers' truth ratios under the model and the retain model (None without
    a retain model)."""
    from core.evaluation.tofu_metrics import forget_quality

    return forget_quality(ratios, retain)["Forget Quality"] if retain is not None else None


MATCHED_DRAWS = 200   # random draws of answers for a size-matched Forget Quality


def size_matched_fq(ratios: list[float], retain: list[float], size: int, draws: int = MATCHED_DRAWS) -> float:
    """Forget Quality over `size` of the forget answers: the median over random draws of `size` answers, the same
    answers under the model and the retain model. FQ is a KS p-value, which shrinks with the number of answers
    for one distance between the two distributions: this compares forget sets of different sizes fairly."""
    import numpy as np

    if size >= len(ratios):
        return forget_quality_over(ratios, retain)
    model, reference, rng = np.asarray(ratios), np.asarray(retain), np.random.default_rng(0)
    picks = (rng.choice(len(ratios), size, replace=False) for _ in range(draws))
    return float(np.median([forget_quality_over(model[i], reference[i]) for i in picks]))


def best_point(points: list[dict], target_mu: float) -> dict:
    """The existing best-checkpoint rule over one method's epochs (epoch 0, the target, excluded). An epoch
    without Model Utility was not needed by the rule (robust.py reads it only where the rule does: see
    robust_plans.utility_needed) and is left out."""
    from core.evaluation.selection import select_best

    candidates = [dict(p, **{"Forget Quality": p["fq"], "Model Utility": p["mu"]}) for p in points[1:]
                  if p["mu"] is not None]
    return select_best(candidates, target_mu)


def best_points(result: dict) -> dict:
    return {method: best_point(points, result["target"]["mu"]) for method, points in result["curves"].items()}


COLLAPSE = 0.5   # "collapse": Model Utility below half the target's, or mean forget fluency below 0.5


def expectations(result: dict) -> list[str]:
    """The NPO paper's two claims, checked on this result's numbers (the rules are stated in the lines)."""
    from core.evaluation.selection import UTILITY_FLOOR

    target_mu, lines = result["target"]["mu"], []
    npo_rt = result["curves"].get("npo_rt", [])[1:]
    claim = f"- NPO+RT reaches Forget Quality >= 0.1 with Model Utility >= {UTILITY_FLOOR:g} x the target's:"
    good = [p for p in npo_rt if (p["fq"] or 0) >= 0.1 and p["mu"] >= UTILITY_FLOOR * target_mu]
    if good:
        p = max(good, key=lambda p: (p["fq"], p["mu"]))
        lines.append(f"{claim} **yes**, "
                     f"epoch {p['epoch']} (FQ {p['fq']:.3g}, MU {p['mu']:.3f} = {p['mu'] / target_mu:.2f} x target).")
    elif npo_rt:
        p = max(npo_rt, key=lambda p: (p["fq"] or 0, p["mu"]))
        lines.append(f"{claim} **no**; its "
                     f"highest FQ is {p['fq']:.3g} at epoch {p['epoch']} (MU {p['mu']:.3f} = "
                     f"{p['mu'] / target_mu:.2f} x target).")
    ga, blown_up = result["curves"].get("ga", []), result.get("diverged", {})
    if ga:
        last = ga[-1]
        collapsed = last["mu"] < COLLAPSE * target_mu or last["forget_fluency"] < COLLAPSE or "ga" in blown_up
        lines.append(f"- GA's utility and fluency collapse (MU < {COLLAPSE:g} x target or forget fluency < "
                     f"{COLLAPSE:g}): **{'yes' if collapsed else 'no'}**; after epoch {last['epoch']} MU is "
                     f"{last['mu']:.3f} = {last['mu'] / target_mu:.2f} x target, forget fluency "
                     f"{last['forget_fluency']:.2f} (target {result['target']['forget_fluency']:.2f}), retain "
                     f"fluency {last['retain_fluency']:.2f}.")
    lines += [f"- {label(m)} stopped early: {message}" for m, message in blown_up.items()]
    return lines


HEADLINE_UTILITY = 0.8      # the NPO paper's forget-50 % claim: utility kept at 0.8 x the target's ...
FAILED_UTILITY, FAILED_FQ = 0.5, 1e-3   # ... where GA-style methods already fail at 10 %


def headline_claims(results: list[dict]) -> list[str]:
    """The NPO paper's headline, checked on the --forget50 results (the rules are stated in the lines)."""
    by_size = {r["plan"]["name"]: r for r in results}
    small, large = by_size.get("forget50-10pct"), by_size.get("forget50-50pct")
    if not (small and large):
        return []
    lines = []
    ga_small = small["curves"].get("ga", [])[1:]
    npo_rt_large = [{**p, "lr": r["plan"]["unlearn_lr"]} for r in results   # every learning rate tried at 50 %
                    if large["plan"]["name"] in (r["plan"]["name"], r["plan"].get("learned_in"))
                    for p in r["curves"].get("npo_rt", [])[1:]]
    rates = ", ".join(sorted({f"{p['lr']:g}" for p in npo_rt_large}))
    if ga_small and npo_rt_large:
        ga_best = max(p["fq"] or 0 for p in ga_small)
        floor = HEADLINE_UTILITY * large["target"]["mu"]
        good = [p for p in npo_rt_large if p["mu"] >= floor and (p["fq"] or 0) > ga_best]
        p = max(good or npo_rt_large, key=lambda p: ((p["fq"] or 0) > ga_best and p["mu"] >= floor, p["fq"] or 0))
        lines.append(f"- At 50 %, NPO+RT keeps Model Utility >= {HEADLINE_UTILITY:g} x the target's with a Forget "
                     f"Quality above GA's best at 10 % ({ga_best:.3g}) at some epoch: **{'yes' if good else 'no'}**; "
                     f"lr {p['lr']:g}, epoch {p['epoch']}: FQ {p['fq']:.3g}, MU {p['mu']:.3f} = "
                     f"{p['mu'] / large['target']['mu']:.2f} x target (learning rates tried: {rates}).")
        lines.append(_against_ga_final(ga_small[-1], npo_rt_large, floor, small, large))
        lines.append(_size_matched(ga_best, npo_rt_large, floor, small, large))
    for method in ("ga", "grad_diff"):
        points = small["curves"].get(method, [])[1:]
        if not points:
            continue
        last, target_mu = points[-1], small["target"]["mu"]
        failed = last["mu"] < FAILED_UTILITY * target_mu or (last["fq"] or 0) < FAILED_FQ
        fine = [p["epoch"] for p in points if p["mu"] >= FAILED_UTILITY * target_mu and (p["fq"] or 0) >= FAILED_FQ]
        lines.append(f"- {label(method)} already fails at 10 % (after the last epoch MU < {FAILED_UTILITY:g} x target "
                     f"or FQ < {FAILED_FQ:g}): **{'yes' if failed else 'no'}**; epoch {last['epoch']}: FQ "
                     f"{last['fq']:.3g}, MU {last['mu']:.3f} = {last['mu'] / target_mu:.2f} x target; epochs with "
                     f"both above those bounds: {fine or 'none'}.")
    return lines


def _against_ga_final(ga_last: dict, npo_rt: list[dict], floor: float, small: dict, large: dict) -> str:
    """The same test against GA's last epoch (where it ends up), and why FQs of the two sizes differ in scale:
    a KS p-value shrinks with the number of forget answers for the same distance between the distributions."""
    kept = [p for p in npo_rt if p["mu"] >= floor]
    best = max((p["fq"] or 0 for p in kept), default=0)
    sizes = small["plan"]["eval_sizes"]["eval_log_forget.json"], large["plan"]["eval_sizes"]["eval_log_forget.json"]
    return (f"- Against GA's last epoch at 10 % instead (FQ {ga_last['fq']:.3g}): NPO+RT's best FQ with MU >= "
            f"{HEADLINE_UTILITY:g} x target is {best:.3g}: **{'above' if best > (ga_last['fq'] or 0) else 'not above'}**. "
            f"(Forget Quality is a KS p-value over {sizes[1]} forget answers at 50 % and {sizes[0]} at 10 %: the same "
            f"distance between the distributions gives a smaller p-value at 50 %, so comparing them favours 10 %.)")


def _size_matched(ga_best: float, npo_rt: list[dict], floor: float, small: dict, large: dict) -> str:
    """The headline test again with FQ at 50 % over as many answers as at 10 % (size_matched_fq)."""
    size = small["plan"]["eval_sizes"]["eval_log_forget.json"]
    retain = large["retain"].get("forget_truth_ratios")
    kept = [p for p in npo_rt if p["mu"] >= floor and "forget_truth_ratios" in p]
    unknown = sorted({f"{p['lr']:g}" for p in npo_rt if "forget_truth_ratios" not in p})
    missing = (f" (not known at lr {', '.join(unknown)}: measured before the record kept per-answer truth ratios)"
               if unknown else "")
    head = (f"- Size-matched: NPO+RT's FQ at 50 % over {size} of its forget answers, as many as at 10 % (the median "
            f"over {MATCHED_DRAWS} random draws, the same answers under the retain model), with MU >= "
            f"{HEADLINE_UTILITY:g} x target")
    if retain is None or not kept:
        return f"{head}: not known yet{missing}."
    matched = [(size_matched_fq(p["forget_truth_ratios"], retain, size), p) for p in kept]
    fq, p = max(matched, key=lambda pair: pair[0])
    return (f"{head}: best {fq:.3g} (lr {p['lr']:g}, epoch {p['epoch']}; over all its answers {p['fq']:.3g}): "
            f"**{'above' if fq > ga_best else 'equal to' if fq == ga_best else 'below'}** GA's best at 10 % "
            f"({ga_best:.3g}; KS p-values over {size} answers take few values){missing}.")

