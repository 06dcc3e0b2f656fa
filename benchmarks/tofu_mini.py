"""Mini-TOFU: TOFU's protocol scaled to the bundled SmolLM2-135M, and the NPO paper's central result
(NPO forgets without collapsing, gradient ascent collapses) measured with this project's own numbers.

Run from the repository root:

    python benchmarks/tofu_mini.py --quick            # smoke run: 4 authors, 1 epoch, tiny evals (minutes)
    python benchmarks/tofu_mini.py                    # the mini protocol (CPU: hours on 2 busy cores)
    python benchmarks/tofu_mini.py --device cuda      # the same on a GPU
    python benchmarks/tofu_mini.py --device cuda --full   # TOFU's own forget01/05/10 protocol on a GPU
    python benchmarks/tofu_mini.py --device cuda --full --splits forget01   # one split at a time

Protocol (mini):
1. Learn a *target* model: supervised fine-tuning (`method="sft"`, full fine-tuning) of the bundled model on
   TOFU authors 0-9 plus the forget01 authors 198-199 (240 QA). Learn a *retain* model the same way on
   authors 0-9 only. Authors 196-197 are never trained on: the held-out set for membership inference.
   (retain_perturbed = the QA of authors 0-19, of which the eval uses the first 60, authors 0-2, and
   forget01_perturbed = authors 198-199, so TOFU's paraphrased and perturbed answers exist for every
   evaluated sample.)
2. Unlearn authors 198-199 from the target with GA, GradDiff, NPO, NPO+RT and SimNPO: same epochs, learning
   rate, batch size and retain data (authors 0-9) for each; a checkpoint every epoch. Twice, on the same
   learned models: at the NPO paper's learning rate 1e-5 (plan "mini") and at 5e-5 ("mini-lr5e-5", the
   paper's four methods: GA, GradDiff, NPO, NPO+RT), since 1e-5 for 50 steps hardly moves a 135M model.
3. Evaluate every epoch's checkpoint with the tofu suite (`core.evaluation`): Forget Quality against the
   retain model, Model Utility, forget ROUGE, fluency (under the target model), min-k% MIA AUC and PrivLeak
   against the retain model. Pick each method's best checkpoint (`core.evaluation.selection`).
4. Write results/tofu_mini.{json,md,png}: the table, the per-epoch figures, and the NPO paper's figure
   redrawn (Forget Quality and Model Utility against epochs, one line per method).

`--full` (for a GPU): target = all 200 authors (tofu:full), retain models on retain99/95/90, unlearning of
forget01/05/10 against retain99/95/90 (TOFU's pairing), TOFU's eval sizes (300 samples, 200 new tokens),
10 epochs (the NPO paper's budget). No MIA (TOFU keeps no author out of `full`).

Caching and resuming: every learned model, unlearning run and evaluation lives under --runs-dir
(default runs/tofu_mini); a finished one is reused, an interrupted training run resumes from its last
checkpoint, an interrupted evaluation is redone. Once a run's epochs are evaluated, the weights of every
checkpoint but the best epoch's are deleted (the final model stays; `--keep-checkpoints` keeps them all):
a full run of the 135M model then takes 1 GB instead of 2.6. Progress and elapsed time are printed as it
goes; the total wall time is recorded in the results.

The record (results/records/<report>/, benchmarks/ledger.py) outlives the cache: every method's per-epoch
figures, the target's and retain model's, each stage's time and the retain model's evaluation log go there as
they are measured. On a fresh machine the run takes what is recorded and measures only the rest, learning the
target again if a method is left (and saying how the new target compares), never a retain model. `--splits`
and `--methods` pick what to measure now, so a protocol longer than a machine's life is measured a few
methods at a time:

    python benchmarks/tofu_mini.py --forget50 --splits forget01 --methods ga,grad_diff
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/tofu_mini.py` puts benchmarks/ first, not the repo
    sys.path.insert(0, str(REPO))

from benchmarks.ledger import Ledger  # noqa: E402  (needs the repository on the path)

METHODS = ("ga", "grad_diff", "npo", "npo_rt", "simnpo")
# The forget-50 % protocol adds every method landed since the paper's five (same budget each).
FORGET50_METHODS = METHODS + ("rmu", "sure", "wga", "satimp", "ceu", "undial", "pdu")
LABELS = {"ga": "GA", "grad_diff": "GradDiff", "npo": "NPO", "npo_rt": "NPO+RT", "simnpo": "SimNPO",
          "rmu": "RMU", "sure": "SURE", "wga": "WGA", "satimp": "SatImp", "ceu": "CE-U", "undial": "UNDIAL",
          "pdu": "PDU"}


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


# ================================================================ data

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
    from core.evaluation.evaluator import tofu_records
    from core.tofu import author_records

    records = tofu_records(plan.forget_split)
    forget_questions = {r["question"] for r in author_records(*plan.forget_authors)}
    assert {r["question"] for r in records["eval_log_forget.json"]} == forget_questions, "forget split mismatch"
    records["eval_log_forget.json"] = records["eval_log_forget.json"][::plan.forget_eval_every]
    return {name: rows[:plan.eval_sizes[name]] for name, rows in records.items()}


# ================================================================ stages (each cached)

class Bench:
    def __init__(self, root: Path, device: str, ledger: Ledger, keep_checkpoints: bool = False):
        self.root, self.device, self.ledger, self.started = root, device, ledger, time.time()
        self.keep_checkpoints = keep_checkpoints
        self.counted = self.started   # wall time up to here is already in the ledger

    def say(self, message: str) -> None:
        print(f"[{_clock(time.time() - self.started)}] {message}", flush=True)
        self.count_wall()

    def count_wall(self) -> float:
        """Add the time since the last call to the record's running total (an interrupted invocation
        keeps what it spent up to its last stage), and return the total."""
        now = time.time()
        total = self.ledger.add_wall(now - self.counted)
        self.counted = now
        return total

    def train(self, out: Path, **settings) -> Path:
        """Train (or reuse / resume) one run; returns its directory."""
        from core.config import UnlearnConfig
        from core.errors import UnlearnError
        from core.runs import RunDir, RunState
        from core.trainer import train

        run = RunDir(out)
        blown_up = diverged(out)
        if run.holds_run() and (blown_up or run.status().get("state") == RunState.FINISHED):
            self.say(f"cached: {out}" + (" (diverged)" if blown_up else ""))
            return out
        resume = run.holds_run()
        self.say(f"{'resuming' if resume else 'training'} {out.name} ({settings.get('method')})")
        started, cpu_started = time.time(), time.process_time()
        if resume:
            config = UnlearnConfig(out=str(out), resume=True)
        else:
            config = UnlearnConfig(out=str(out), device=self.device, eval_examples=8, logging_steps=5, **settings)
        try:
            result = train(config, show_progress=False, log=lambda m: None)
        except UnlearnError:
            blown_up = diverged(out)
            if not blown_up:
                raise
            self.say(f"{out.name} diverged: {blown_up}")   # a result too: evaluate the epochs it reached
            return out
        finally:
            self.record_stage(out, time.time() - started, time.process_time() - cpu_started)
        assert result.state == RunState.FINISHED, f"{out} ended {result.state}"
        return out

    def record_stage(self, path: Path, seconds: float, cpu_seconds: float) -> None:
        """Wall and CPU seconds per stage (a run or an evaluation). CPU time (this process, all threads) hardly
        depends on what else the machine runs."""
        self.ledger.add_stage(str(path.relative_to(self.root)), seconds, cpu_seconds)

    def evaluate(self, model: str, out: Path, plan: Plan, reference, retain_eval: Path | None,
                 holdout) -> dict:
        """The tofu suite on `model` (a run, checkpoint or model dir), cached by its summary.json."""
        from core.evaluation.evaluator import Settings, run_tofu
        from core.evaluation.loading import open_model

        summary_path = out / "summary.json"
        if summary_path.is_file():
            return json.loads(summary_path.read_text())
        _require_weights(Path(model))
        self.say(f"evaluating {Path(model).relative_to(self.root) if Path(model).is_relative_to(self.root) else model}"
                 f" ({plan.eval_dtype})")
        started, cpu_started = time.time(), time.process_time()
        loaded = open_model(model, self.device, dtype=plan.eval_dtype)
        settings = Settings(max_samples=max(plan.eval_sizes.values()), max_new_tokens=plan.max_new_tokens,
                            batch_size=plan.eval_batch)
        summary = run_tofu(loaded, out, settings, plan.forget_split, reference, holdout, retain_eval,
                           records=eval_records(plan), reference_name="target model")
        del loaded
        self.record_stage(out, time.time() - started, time.process_time() - cpu_started)
        return summary


def run_plan(plan: Plan, bench: Bench, only: tuple[str, ...] | None = None) -> dict:
    """The plan's result: what the ledger records, plus the methods (of `only`, if given) it lacks, measured now."""
    from core.data import load_examples
    from core.evaluation.loading import open_model

    settings = asdict(plan)
    recorded = bench.ledger.plan(settings).get("curves", {})
    missing = [m for m in plan.methods if (only is None or m in only) and m not in recorded]
    if not missing and (result := bench.ledger.result(settings, plan.methods)):
        bench.say(f"{plan.name}: nothing left to measure; taken from {bench.ledger.path}")
        return result
    root = bench.root / plan.name
    learned = bench.root / (plan.learned_in or plan.name)
    files = prepare_data(plan, root)
    learn = dict(method="sft", epochs=plan.learn_epochs, lr=plan.learn_lr, batch_size=plan.learn_batch,
                 save_steps=50, warmup_ratio=0.1, model="bundled", dtype=plan.train_dtype)
    target = bench.train(_target_dir(plan, bench.root, learned), forget=files["target"], **learn)
    if not bench.keep_checkpoints:   # a finished learn run's checkpoints only served resuming it
        _prune_checkpoints(target, keep_weights=lambda step: False)
    holdout = load_examples(files["holdout"], "holdout") if "holdout" in files else None

    target_model = open_model(str(target), bench.device, dtype=plan.eval_dtype)
    reference = (target_model.model, target_model.tokenizer)   # fluency is judged by the target model
    retain_eval = bench.ledger.retain_eval(settings)
    if retain_eval is None:   # learned and evaluated once; its evaluation is all that is needed of it
        retain = bench.train(learned / "retain", forget=files["retain"], **learn)
        if not bench.keep_checkpoints:
            _prune_checkpoints(retain, keep_weights=lambda step: False)
        bench.evaluate(str(retain), eval_dir(learned, plan) / "retain", plan, reference, None, holdout)
        retain_eval = bench.ledger.keep_retain_eval(settings, eval_dir(learned, plan) / "retain")
    retain_summary = json.loads((retain_eval / "summary.json").read_text())
    target_summary = bench.evaluate(str(target), eval_dir(learned, plan) / "target", plan, reference, retain_eval,
                                    holdout)
    target_point = _point(target_summary, eval_dir(learned, plan) / "target")
    relearned = bench.ledger.keep_models(settings, target_point, _point(retain_summary, retain_eval),
                                         _weights_digest(target / "model"))
    if relearned:
        bench.say(relearned)

    for method in missing:
        steps_per_epoch = _steps_per_epoch(files["forget"], plan.unlearn_batch)
        run = bench.train(root / f"unlearn-{method}", model=str(target / "model"), method=method,
                          forget=files["forget"], retain=files["retain"], epochs=plan.unlearn_epochs,
                          lr=plan.unlearn_lr, batch_size=plan.unlearn_batch, warmup_ratio=0.1, dtype=plan.train_dtype,
                          save_steps=steps_per_epoch, save_total_limit=plan.unlearn_epochs + 5)
        blown_up = diverged(run)
        points = [{"epoch": 0, **target_point}]
        for epoch, model in _epoch_models(run, plan.unlearn_epochs, steps_per_epoch, blown_up is not None):
            evaluated = eval_dir(root, plan) / f"{method}-epoch{epoch}"
            summary = bench.evaluate(str(model), evaluated, plan, reference, retain_eval, holdout)
            points.append({"epoch": epoch, **_point(summary, evaluated)})
        bench.ledger.keep_curve(settings, method, points, blown_up)
        _prune_checkpoints(run, keep_weights=_weights_worth_keeping(points, steps_per_epoch, bench.keep_checkpoints))
        bench.say(f"{LABELS[method]}: " + ", ".join(f"ep{p['epoch']} FQ {p['fq']:.2g} MU {p['mu']:.3f}" for p in points))
    return bench.ledger.result(settings, plan.methods)


def eval_dir(root: Path, plan: Plan) -> Path:
    """Evaluations are cached per weights dtype (fp32 keeps the plain name of the caches made before)."""
    return root / ("eval" if plan.eval_dtype == "float32" else f"eval-{plan.eval_dtype}")


def _target_dir(plan: Plan, bench_root: Path, plan_root: Path) -> Path:
    """Plans that learn the same authors (--full's three, --forget50's two) share one target model."""
    return bench_root / plan.shared_target if plan.shared_target else plan_root / "target"


def diverged(run: Path) -> str | None:
    """The trainer's message when the run stopped on a non-finite loss (gradient ascent's blow-up)."""
    from core.runs import RunDir, RunState

    status = RunDir(run).status()
    error = status.get("error") or ""
    return error if status.get("state") == RunState.FAILED and "non-finite" in error else None


def _prune_checkpoints(run: Path, keep_weights) -> None:
    """Once a run's epochs are evaluated, its checkpoints' AdamW moments (twice the weights) are dead weight,
    and only the weights `keep_weights(step)` asks for are worth the disk: a full fine-tuning checkpoint of
    the 135M model is 0.5 GB, and --forget50 makes 70 of them. The checkpoint folders stay, so the cached
    evaluations still line up with their epochs."""
    from core.checkpoint import OPTIMIZER, WEIGHTS

    for checkpoint in (run / "checkpoints").glob("step-*"):
        (checkpoint / OPTIMIZER).unlink(missing_ok=True)
        if not keep_weights(int(checkpoint.name.split("-")[1])):
            (checkpoint / WEIGHTS).unlink(missing_ok=True)


def _weights_worth_keeping(points: list[dict], steps_per_epoch: int, keep_all: bool):
    """Every epoch's weights with --keep-checkpoints (or when no epoch was evaluated), else the best one's."""
    if keep_all or len(points) == 1:
        return lambda step: True
    best_step = best_point(points, points[0]["mu"])["evaluation"]["epoch"] * steps_per_epoch
    return lambda step: step == best_step


def _weights_digest(model: Path) -> str:
    """SHA-256 over a model folder's safetensors: tells a target learned again from the one recorded."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(model.glob("*.safetensors")):
        with path.open("rb") as handle:
            while block := handle.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()


def _require_weights(model: Path) -> None:
    """A checkpoint whose weights were dropped after its evaluation cannot be evaluated again."""
    from core.checkpoint import STATE, WEIGHTS

    if (model / STATE).is_file() and not (model / WEIGHTS).is_file():
        raise SystemExit(f"{model}: its weights were dropped once it was evaluated, and its evaluation is gone "
                         f"from the cache; delete {model.parent.parent} to retrain it, and pass "
                         "--keep-checkpoints to keep every epoch's weights")


def _steps_per_epoch(path: str, batch: int) -> int:
    rows = sum(1 for line in Path(path).read_text().splitlines() if line.strip())
    return max(1, -(-rows // batch))


def _epoch_models(run: Path, epochs: int, steps_per_epoch: int, blew_up: bool) -> list[tuple[int, Path]]:
    """The checkpoint at every epoch boundary, then the final model. A checkpoint written when an
    interrupted run stopped mid-epoch is not an epoch boundary and is skipped."""
    found = {int(c.name.split("-")[1]): c for c in (run / "checkpoints").glob("step-*")}
    models = [(epoch, found.get(epoch * steps_per_epoch)) for epoch in range(1, epochs)]
    if blew_up:   # only the epochs finished before the loss became non-finite
        return [(epoch, path) for epoch, path in models if path is not None]
    missing = [epoch for epoch, path in models if path is None]
    assert not missing, f"{run}: no checkpoint for epoch(s) {missing}; delete the run to redo it"
    return models + [(epochs, run)]


def _point(summary: dict, evaluated: Path) -> dict:
    """What the record keeps of one evaluation: its figures, and the forget answers' truth ratios (what Forget
    Quality is computed from, so that it can be computed again over fewer answers)."""
    figures = summary["figures"]
    point = {"fq": figures.get("Forget Quality"), "mu": figures["Model Utility"],
             "forget_rouge": figures["Forget ROUGE"], "forget_prob": figures["Forget Prob."],
             "forget_fluency": summary["fluency"]["Forget"], "retain_fluency": summary["fluency"]["Retain"],
             "retain_rouge": figures["Retain ROUGE"], "forget_truth_ratio": figures["Forget Truth Ratio"],
             "retain_prob": figures["Retain Prob."], "retain_truth_ratio": figures["Retain Truth Ratio"],
             "eval_seconds": summary.get("wall_seconds"), "forget_truth_ratios": forget_truth_ratios(evaluated)}
    if "mia" in summary:
        point.update(mia_auc=summary["mia"]["auc"], privleak=summary["mia"].get("privacy_leakage"))
    return point


def forget_truth_ratios(evaluated: Path) -> list[float]:
    """The forget answers' truth ratios of an evaluation folder, in sample order (as Forget Quality reads them)."""
    from core.evaluation.evaluator import read_eval_output
    from core.evaluation.tofu_metrics import forget_ratios

    return forget_ratios(read_eval_output(evaluated)["logs"]).tolist()


def fill_truth_ratios(bench: Bench, plan: Plan) -> int:
    """Give the points recorded before truth ratios were kept (2026-12-02) their ratios, from this machine's cached
    evaluations where it has them. Those are the recorded evaluations themselves (a recorded method is never
    measured again; the target's only while its weights are the recorded ones), and each fill is checked: the
    ratios must give the recorded Forget Quality again. Returns how many points were filled."""
    settings = asdict(plan)
    lacking = [(name, point) for name, point in bench.ledger.points(settings) if "forget_truth_ratios" not in point]
    retain_folder = bench.ledger.retain_eval(settings)
    if not lacking or retain_folder is None:
        return 0
    learned = bench.root / (plan.learned_in or plan.name)
    target = _target_dir(plan, bench.root, learned) / "model"
    same_target = target.is_dir() and _weights_digest(target) == bench.ledger.plan(settings)["target_weights"]
    retain = forget_truth_ratios(retain_folder)

    def cached(name) -> Path | None:
        if name == "target" or name[1] == 0:
            return eval_dir(learned, plan) / "target" if same_target else None
        method, epoch = name
        return eval_dir(bench.root / plan.name, plan) / f"{method}-epoch{epoch}"

    filled = 0
    for name, point in lacking:
        if name == "retain":
            point["forget_truth_ratios"] = retain
            filled += 1
            continue
        folder = cached(name)
        if folder is None or not (folder / "summary.json").is_file():
            continue
        ratios = forget_truth_ratios(folder)
        if point["fq"] != _fq(ratios, retain):
            bench.say(f"{plan.name}: {name}'s cached evaluation does not give its recorded Forget Quality; left out")
            continue
        point["forget_truth_ratios"] = ratios
        filled += 1
    if filled:
        bench.ledger.save()
        bench.say(f"{plan.name}: truth ratios of {filled} recorded points taken from this machine's evaluations")
    return filled


def _fq(ratios: list[float], retain: list[float] | None) -> float | None:
    from core.evaluation.tofu_metrics import forget_quality

    return forget_quality(ratios, retain)["Forget Quality"] if retain is not None else None


MATCHED_DRAWS = 200   # random draws of answers for a size-matched Forget Quality


def size_matched_fq(ratios: list[float], retain: list[float], size: int, draws: int = MATCHED_DRAWS) -> float:
    """Forget Quality over `size` of the forget answers: the median over random draws of `size` answers, the same
    answers under the model and the retain model. FQ is a KS p-value, which shrinks with the number of answers
    for one distance between the two distributions: this compares forget sets of different sizes fairly."""
    import numpy as np

    if size >= len(ratios):
        return _fq(ratios, retain)
    model, reference, rng = np.asarray(ratios), np.asarray(retain), np.random.default_rng(0)
    picks = (rng.choice(len(ratios), size, replace=False) for _ in range(draws))
    return float(np.median([_fq(model[i], reference[i]) for i in picks]))


# ================================================================ report

def best_point(points: list[dict], target_mu: float) -> dict:
    """The existing best-checkpoint rule over one method's epochs (epoch 0, the target, excluded)."""
    from core.evaluation.selection import select_best

    candidates = [dict(p, **{"Forget Quality": p["fq"], "Model Utility": p["mu"]}) for p in points[1:]]
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
    lines += [f"- {LABELS[m]} stopped early: {message}" for m, message in blown_up.items()]
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
        lines.append(f"- {LABELS[method]} already fails at 10 % (after the last epoch MU < {FAILED_UTILITY:g} x target "
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


def markdown(result: dict, wall: float, device: str) -> str:
    from core.evaluation.report import table

    plan = result["plan"]
    target_mu = result["target"]["mu"]
    best = best_points(result)
    header = ["model", "epoch", "FQ", "MU", "MU / target", "forget ROUGE", "forget fluency", "retain fluency",
              "MIA AUC", "PrivLeak %"]

    def row(label, epoch, p):
        return [label, epoch, p["fq"], p["mu"], p["mu"] / target_mu, p["forget_rouge"], p["forget_fluency"],
                p["retain_fluency"], p.get("mia_auc"), p.get("privleak")]

    final = [row("target (before)", "-", result["target"]), row("retain (ideal)", "-", result["retain"])]
    final += [row(LABELS[m], pts[-1]["epoch"], pts[-1]) for m, pts in result["curves"].items()]
    chosen = [row(LABELS[m] + ("" if b["meets_floor"] else " (below floor)"), b["evaluation"]["epoch"],
                  b["evaluation"]) for m, b in best.items()]
    rule = next(iter(best.values()))["rule"] if best else ""
    return "\n".join([
        f"# Mini-TOFU: {plan['name']}", "",
        f"Device: {device}. Wall time: {_clock(wall)} (every invocation that measured these results, on every "
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
    missing = [LABELS[m] for m in result["plan"]["methods"] if m not in result["curves"]]
    if missing:
        lines += [f"**Partial: not measured yet: {', '.join(missing)}.**", ""]
    for note in result.get("relearned", []):
        lines += [f"The target was learned again on {note['date']} (a fresh machine; other weights): "
                  + ("its figures came out identical." if not note["target"] else
                     "its figures that changed (then, now): " + json.dumps(note["target"]) + "."), ""]
    return lines


# matplotlib's ten-colour cycle (the colours the first reports used), then colours none of it resembles
PALETTE = tuple(f"C{i}" for i in range(10)) + ("navy", "lime", "maroon", "gold")
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "d")   # twelve lines: some colours are close


def method_style(method: str) -> dict:
    """One colour and one marker per method in every panel and every report (in LABELS' order); the marker
    keeps lines of close colours (NPO and PDU, GA and CE-U) apart."""
    index = list(LABELS).index(method)
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
            rows.append((r, [(m, f"{LABELS[m]} (lr {lr:g})" if m in repeated else LABELS[m], style, points)
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
        for method, label, linestyle, points in lines:
            epochs = [p["epoch"] for p in points]
            style = dict(label=label, linestyle=linestyle, **method_style(method))
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
    rows = [[name, _clock(t["wall"]), _clock(t["cpu"]), t["invocations"]] for name, t in stages.items()]
    rows.append(["total", _clock(sum(t["wall"] for t in stages.values())),
                 _clock(sum(t["cpu"] for t in stages.values())), ""])
    return "\n".join(["## Time per stage", "",
                      table(["stage (under the runs folder)", "wall time", "CPU time (2 cores: up to 2x wall)",
                             "invocations"], rows), ""])


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


# ================================================================ main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 authors, GA and NPO+RT, 2 epochs")
    parser.add_argument("--full", action="store_true", help="TOFU's forget01/05/10 protocol (for a GPU)")
    parser.add_argument("--forget50", action="store_true",
                        help="the NPO paper's headline: forget 10 %% and 50 %% of a 20-author target")
    parser.add_argument("--splits", default=None,
                        help="with --full or --forget50: which forget splits to measure now, comma-separated "
                             "(default all; the others' recorded results still go into the report)")
    parser.add_argument("--methods", default=None,
                        help="which methods to measure now, comma-separated (default all; a long protocol can "
                             "be measured a few methods per machine, the record keeps the rest)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--eval-dtype", default="float32", choices=("auto", "float32", "bfloat16"),
                        help="weights for the evaluations (default float32, as the published results)")
    parser.add_argument("--train-dtype", default="float32", choices=("auto", "float32", "bfloat16"),
                        help="learning and unlearning (default float32, as the published results; its runs are "
                             "cached apart only by the run directory: use another --runs-dir for auto)")
    parser.add_argument("--runs-dir", default=None, help="cache of models and evaluations (default runs/tofu_mini)")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep every epoch's weights (by default only the best epoch's and the final model "
                             "are kept once evaluated: 0.5 GB per full fine-tuning checkpoint)")
    parser.add_argument("--results", default=None,
                        help="where tofu_mini.{json,md,png} go (default docs/results, or RUNS/results with --quick)")
    args = parser.parse_args(argv)

    from core.models import dtype_name, inference_dtype, pick_device

    device = str(pick_device(args.device))
    # `auto` decided here and recorded as what it chose: the record must not mix machines that chose apart
    eval_dtype, train_dtype = (dtype_name(inference_dtype(requested, pick_device(device)))
                               for requested in (args.eval_dtype, args.train_dtype))
    root = Path(args.runs_dir or REPO / "runs" / ("tofu_mini_quick" if args.quick else "tofu_mini")).resolve()
    results_dir = Path(args.results or (root / "results" if args.quick else REPO / "docs" / "results"))
    results_dir.mkdir(parents=True, exist_ok=True)
    plans = full_plans() if args.full else forget50_plans() if args.forget50 else \
        [quick_plan()] if args.quick else mini_plans()
    plans = [replace(plan, eval_dtype=eval_dtype, train_dtype=train_dtype) for plan in plans]
    splits = _names(args.splits, {p.forget_split for p in plans}, "--splits", parser)
    methods = _names(args.methods, {m for p in plans for m in p.methods}, "--methods", parser)
    stem = "tofu_full" if args.full else "tofu_forget50" if args.forget50 else "tofu_mini"
    require_plotting()
    ledger = Ledger(results_dir / "records" / stem)
    ledger.hold()
    bench = Bench(root, device, ledger, args.keep_checkpoints)
    bench.say(f"mini-TOFU on {device}: plans {', '.join(p.name for p in plans)}; cache {root}; "
              f"record {bench.ledger.path}")
    for plan in plans:
        fill_truth_ratios(bench, plan)
    results = [run_plan(plan, bench, methods) if splits is None or plan.forget_split in splits
               else bench.ledger.result(asdict(plan), plan.methods) for plan in plans]
    results = [r for r in results if r]   # a plan not measured now and never before has no result
    wall = bench.count_wall()
    (results_dir / f"{stem}.json").write_text(json.dumps(
        {"device": device, "wall_seconds": round(wall, 1), "results": results,
         "best": [{m: {"epoch": b["evaluation"]["epoch"], "meets_floor": b["meets_floor"], "rule": b["rule"]}
                   for m, b in best_points(r).items()} for r in results]}, indent=2))
    headline = headline_claims(results)
    (results_dir / f"{stem}.md").write_text("\n".join(
        (["# The NPO paper's headline: forget 10 % and 50 %", "", *headline, ""] if headline else [])
        + [markdown(r, wall, device) for r in results] + [stage_table(bench.ledger)]))
    plot(results, results_dir / f"{stem}.png", one_row_per_size=args.forget50)   # the issue: a panel per size
    print((results_dir / f"{stem}.md").read_text())
    bench.say(f"done: results in {results_dir} (wall time {_clock(wall)})")
    return 0


def require_plotting() -> None:
    """The figure is drawn when a run that may take hours ends: check for its library before the first stage."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("matplotlib is missing (the benchmarks draw their figures with it); install it with: "
                         "bash scripts/setup.sh --bench") from None


def _names(given: str | None, known: set[str], option: str, parser) -> tuple[str, ...] | None:
    """A comma-separated choice among `known` (None: all of them)."""
    if given is None:
        return None
    names = tuple(n.strip() for n in given.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        parser.error(f"{option} {given!r}: {', '.join(unknown) or 'nothing'} is not one of {', '.join(sorted(known))}")
    return names


if __name__ == "__main__":
    sys.exit(main())
