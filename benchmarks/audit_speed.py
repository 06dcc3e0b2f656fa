"""The audit's cost, old against new, side by side on one small run: the audit as it was before issue 31
(commit a099265: one learning rate, one seed, no control) against today's with a control, three learning
rates and two seeds, all four attacks. Reports the wall time of each and the fine-tuning attacks' steps per
second (every fine-tuning step the audit ran, the control's included, over the time those attacks took).

    python benchmarks/audit_speed.py                       # the demo model, a 20-step LoRA run, control bundled
    python benchmarks/audit_speed.py --max-samples 8 --attack-steps 5 --attacks relearn,benign,rephrase
    python benchmarks/audit_speed.py --audits old,worst           # some of the three (old, new, worst)

The old audit runs from `git archive OLD core audit export` in a scratch folder, put first on sys.path (the
core it was written against); both run in their own fresh interpreter, one after the other, on the same run.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OLD = "a099265"
AUDIT = ("import json, sys, time; sys.path.insert(0, sys.argv[1]); from audit import run_audit; "
         "t = time.time(); r = run_audit(sys.argv[2], sys.argv[3], sys.argv[4].split(','), json.loads(sys.argv[5]), "
         "max_samples=int(sys.argv[6]), device='cpu', log=lambda m: None, **json.loads(sys.argv[7])); "
         "print(json.dumps({'wall': time.time() - t, 'results': r['results']}))")


def small_run(model: str, folder: Path, steps: int) -> Path:
    """A LoRA NPO+RT run on the demo data (trained once, reused)."""
    from core.config import UnlearnConfig
    from core.runs import RunDir
    from core.trainer import train

    out = folder / "run"
    if not RunDir(out).has_final_model():
        demo = REPO / "assets" / "demo"
        train(UnlearnConfig(model=model, method="npo_rt", forget=str(demo / "forget.jsonl"),
                            retain=str(demo / "retain.jsonl"), out=str(out), overwrite=True, max_steps=steps,
                            lora=True, device="cpu", save_steps=0, eval_examples=0), show_progress=False)
    return out


def timed(code_root: Path, run: Path, out: Path, attacks: str, options: dict, samples: int, extra: dict) -> dict:
    shutil.rmtree(out, ignore_errors=True)   # timed from nothing: no finished points kept from an earlier try
    done = subprocess.run([sys.executable, "-c", AUDIT, str(code_root), str(run), str(out), attacks,
                           json.dumps(options), str(samples), json.dumps(extra)],
                          capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        sys.exit(f"error: the audit in {code_root} failed:\n{done.stderr[-3000:]}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    finetuning = [r for r in found["results"] if r["name"] in ("relearn", "benign")]
    steps = sum(p.get("steps", 0) * (2 if "control_attacked" in p["forget"] else 1)
                for r in finetuning for p in r.get("points", [r]))
    seconds = sum(r["seconds"] for r in finetuning)
    return {"wall": round(found["wall"], 1), "finetune_steps": steps, "finetune_seconds": seconds,
            "steps_per_second": round(steps / seconds, 2) if seconds else None, "attacks": _per_attack(found)}


def _per_attack(found: dict) -> dict:
    """{attack: seconds}: an attack's several results ("quantize: gguf-q4_0", ...) share its one time."""
    return {name: round(seconds) for name, seconds in
            {r["name"].split(":")[0]: r["seconds"] for r in found["results"]}.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo", help="the run's target (demo: it learned the demo's authors)")
    parser.add_argument("--control", default="bundled", help="never saw the demo's authors")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--attack-steps", type=int, default=30)
    parser.add_argument("--max-samples", type=int, default=20)
    parser.add_argument("--attacks", default="relearn,benign,quantize,rephrase")
    parser.add_argument("--folder", default=str(REPO / "runs" / "audit_speed"))
    parser.add_argument("--audits", default="old,new,worst", help="which audits to time, one after the other")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    run = small_run(args.model, folder, args.train_steps)
    control = args.control
    steps = {"relearn_steps": args.attack_steps, "benign_steps": args.attack_steps}
    # the three rates the budget names: the sweep's reach past an end (default 1) is left out, as it
    # adds points only where the worst case sits at an end (docs/audit.md says what it costs)
    sweep = {**steps, "relearn_lr": "x0.3,x1,x3", "benign_lr": "x0.3,x1,x3", "relearn_lr_extend": 0,
             "benign_lr_extend": 0}
    audits = {
        "old": ("old (a099265): 1 lr, 1 seed, no control", lambda: _old_audit(run, folder, args, steps)),
        "new": (f"new: control {control}, 3 lrs, 2 seeds",
                lambda: timed(REPO, run, folder / "audit-new", args.attacks, sweep, args.max_samples,
                              {"control": control, "seeds": 2})),
        "worst": (f"new, --seeds-at worst: control {control}, 3 lrs on seed 1, seed 2 at the worst",
                  lambda: timed(REPO, run, folder / "audit-worst", args.attacks, sweep, args.max_samples,
                                {"control": control, "seeds": 2, "seeds_at": "worst"}))}
    chosen = [name.strip() for name in args.audits.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in audits]
    if unknown:
        parser.error(f"--audits: {', '.join(unknown)} is not one of {', '.join(audits)}")
    found = {name: audits[name][1]() for name in chosen}
    print(f"{time.strftime('%Y-%m-%d')}, {args.model} LoRA run, {args.max_samples} samples, attacks {args.attacks}, "
          f"{args.attack_steps} attack steps")
    attacks = list(dict.fromkeys(a for result in found.values() for a in result["attacks"]))
    print(f"| audit | wall s | {' | '.join(attacks)} | fine-tuning steps | steps/s |\n"
          f"|---|---|{'---|' * len(attacks)}---|---|")
    for name, result in found.items():
        seconds = " | ".join(str(result["attacks"].get(a, "-")) for a in attacks)
        print(f"| {audits[name][0]} | {result['wall']} | {seconds} | {result['finetune_steps']} | "
              f"{result['steps_per_second']} |")
    if "old" in found:
        for name in [n for n in found if n != "old"]:
            print(f"{name} / old wall time: {found[name]['wall'] / found['old']['wall']:.2f}x")
    return 0


def _old_audit(run: Path, folder: Path, args, steps: dict) -> dict:
    with tempfile.TemporaryDirectory() as old_code:
        # the old audit with the core and export it was written against (core has moved on since)
        archive = subprocess.run(["git", "archive", OLD, "core", "audit", "export"], cwd=REPO, capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", old_code], input=archive, check=True)
        return timed(Path(old_code), run, folder / "audit-old", args.attacks, steps, args.max_samples, {})


if __name__ == "__main__":
    sys.exit(main())
