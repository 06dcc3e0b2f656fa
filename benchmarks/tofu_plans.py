"""Mini-TOFU's protocols: each `Plan` names the authors learned, unlearned and held out, and every knob of
learning, unlearning and evaluation; `prepare_data` and `eval_records` cut TOFU to a plan's authors.
Recorded with the results (benchmarks/ledger.py): a record measured under other settings is refused."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

METHODS = ("ga", "grad_diff", "npo", "npo_rt", "simnpo")
# The forget-50 % protocol adds every method landed since the paper's five (same budget each).
FORGET50_METHODS = METHODS + ("rmu", "sure", "wga", "satimp", "ceu", "undial", "pdu")
LABELS = {"ga": "GA", "grad_diff": "GradDiff", "npo": "NPO", "npo_rt": "NPO+RT", "simnpo": "SimNPO",
          "rmu": "RMU", "sure": "SURE", "wga": "WGA", "satimp": "SatImp", "ceu": "CE-U", "undial": "UNDIAL",
          "pdu": "PDU"}


def label(method: str) -> str:
    """A method's name in tables and legends (its registry name when LABELS has none: a method added later)."""
    return LABELS.get(method, method)


@dataclass
class Plan:
    """Every knob of one protocol; recorded with the results."""
    name: str
    retain_authors: tuple[tuple[int, int], ...]  # author ranges (inclusive) trained in both target and retain
                                             # models; the retain data of unlearning
    forget_authors: tuple[int, int]          # trained in the target only, then unlearned
    holdout_authors: tuple[int, int] | None  # never trained: MIA non-members
    forget_split: str                        # the forgetNN_perturbed split holding forget_authors
    learn_epochs: float = 5.0
    learn_lr: float = 1e-4                   # a 135M model needs far more than TOFU's 1e-5..2e-5 to memorise in 5
                                             # epochs (5e-5 for 2 epochs left the answers unlearned)
    learn_batch: int = 8
    unlearn_epochs: int = 5
    unlearn_lr: float = 1e-5                 # the NPO paper's
    unlearn_batch: int = 4
    unlearn_examples: int | None = None      # unlearn only the first N forget QA (the --quick smoke run)
    eval_sizes: dict = field(default_factory=lambda: {"eval_log.json": 60, "eval_log_forget.json": 40,
                                                      "eval_real_author_wo_options.json": 30,
                                                      "eval_real_world_wo_options.json": 30})
    max_new_tokens: int = 48                 # TOFU: 200; answers are ~30 tokens and ROUGE is a recall
    eval_batch: int = 16
    eval_dtype: str = "float32"              # weights for every evaluation (benchmarks/eval_precision.py compares)
    train_dtype: str = "float32"             # learning and unlearning: fp32 (the published results) or auto/bfloat16
    methods: tuple[str, ...] = METHODS
    learned_in: str | None = None            # reuse the target/retain models (and their evals) of this plan
    shared_target: str | None = None         # a target model shared by plans that learn the same authors
    forget_eval_every: int = 1               # evaluate every n-th forget QA (a large forget set, sampled evenly)


def mini_plans() -> list[Plan]:
    # Authors 0-9 (200 QA) keep the two learn stages near 20 min each on 2 CPU cores; the retain eval set
    # (its first 60 QA = authors 0-2) lies inside them.
    paper = Plan("mini", ((0, 9),), (198, 199), (196, 197), "forget01")
    # At the paper's 1e-5, 50 steps barely move a 135M model (GA's forget NLL 0.17 -> 0.95 per token), so
    # nothing can collapse; 5x that rate, on the same learned models, shows what a budget that forgets does.
    # The NPO paper's four methods only: each costs ~15 min of CPU, mostly its six evaluations.
    hot = Plan("mini-lr5e-5", ((0, 9),), (198, 199), (196, 197), "forget01", unlearn_lr=5e-5, learned_in="mini",
               methods=("ga", "grad_diff", "npo", "npo_rt"))
    return [paper, hot]


def quick_plan() -> Plan:
    """A pipeline check only: a few steps everywhere, numbers meaningless."""
    return Plan("quick", ((0, 0),), (198, 199), (196, 197), "forget01", learn_epochs=0.25, unlearn_epochs=2,
                unlearn_examples=8, eval_sizes={"eval_log.json": 4, "eval_log_forget.json": 4,
                                                "eval_real_author_wo_options.json": 4,
                                                "eval_real_world_wo_options.json": 4},
                max_new_tokens=8, methods=("ga", "npo_rt"))


def full_plans() -> list[Plan]:
    """TOFU proper: forget01/05/10 (the last 2/10/20 authors) against retain99/95/90."""
    tofu = {"eval_log.json": 300, "eval_log_forget.json": 300, "eval_real_author_wo_options.json": 300,
            "eval_real_world_wo_options.json": 300}
    plans = []
    for split, authors in (("forget01", 2), ("forget05", 10), ("forget10", 20)):
        plans.append(Plan(f"full-{split}", ((0, 199 - authors),), (200 - authors, 199), None, split,
                          learn_lr=2e-5, learn_batch=16, unlearn_epochs=10, eval_sizes=tofu, max_new_tokens=200,
                          eval_batch=64, shared_target="target-authors0-199"))
    return plans


def forget50_plans() -> list[Plan]:
    """The NPO paper's headline at mini scale: one target learns 20 authors (0-9 and forget05's 190-199);
    10 % of them (forget01's 198-199) or 50 % (all of forget05) are unlearned. Each size has the retain model
    that never saw its forget authors: authors 0-9 plus 190-197 for 10 %, authors 0-9 for 50 %, and unlearns
    with that model's authors as retain data. Authors 188-189 are never trained: the MIA's non-members.
    Unlearning at 5e-5 (the rate that reproduced the paper's central result in "mini-lr5e-5"), the paper's five
    methods plus every one landed since (RMU, SURE, WGA, SatImp, CE-U, UNDIAL, PDU). The 200 forget05 QA
    are evaluated every second one (100 QA, ten per author: one evaluation ~10 min in fp32 on 2 AVX2 cores);
    FQ compares the same 100 under the unlearned and the retain model. At 5e-5 NPO+RT's FQ at 50 % levelled
    off with utility to spare (MU 0.91x target), the case the issue answers with one more learning rate:
    NPO+RT again at 1e-4 on the same learned models."""
    shared = dict(holdout_authors=(188, 189), unlearn_lr=5e-5, shared_target="forget50-target",
                  methods=FORGET50_METHODS)
    half = Plan("forget50-50pct", ((0, 9),), (190, 199), forget_split="forget05", forget_eval_every=2,
                eval_sizes={"eval_log.json": 60, "eval_log_forget.json": 100,
                            "eval_real_author_wo_options.json": 30, "eval_real_world_wo_options.json": 30},
                **shared)
    return [Plan("forget50-10pct", ((0, 9), (190, 197)), (198, 199), forget_split="forget01", **shared), half,
            replace(half, name="forget50-50pct-lr1e-4", unlearn_lr=1e-4, learned_in=half.name, methods=("npo_rt",))]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        path.write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n" for r in rows))
    return str(path)


def prepare_data(plan: Plan, root: Path) -> dict[str, str]:
    from core.tofu import author_records

    data = root / "data"
    retain = [row for authors in plan.retain_authors for row in author_records(*authors)]
    forget = author_records(*plan.forget_authors)
    files = {"target": write_jsonl(data / f"{plan.name}-target.jsonl", retain + forget),
             "retain": write_jsonl(data / f"{plan.name}-retain.jsonl", retain),
             "forget": write_jsonl(data / f"{plan.name}-forget.jsonl", forget[:plan.unlearn_examples])}
    if plan.holdout_authors:
        files["holdout"] = write_jsonl(data / f"{plan.name}-holdout.jsonl", author_records(*plan.holdout_authors))
    return files


def eval_records(plan: Plan) -> dict[str, list[dict]]:
    """TOFU's four eval sets, cut to the plan's sizes; checked to hold exactly the forget authors."""
    from core.evaluation.suites.tofu import tofu_records
    from core.tofu import author_records

    records = tofu_records(plan.forget_split)
    forget_questions = {r["question"] for r in author_records(*plan.forget_authors)}
    assert {r["question"] for r in records["eval_log_forget.json"]} == forget_questions, "forget split mismatch"
    records["eval_log_forget.json"] = records["eval_log_forget.json"][::plan.forget_eval_every]
    return {name: rows[:plan.eval_sizes[name]] for name, rows in records.items()}

