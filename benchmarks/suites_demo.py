"""The muse and mcq suites on the demo model (SmolLM2-135M that learned TOFU authors 0-1 and 198-199),
original against an NPO+RT unlearning of authors 198-199 with the studio's demo settings. Writes
docs/results/suites_demo.{md,json}.

    python benchmarks/suites_demo.py [--runs-dir runs/suites_demo]

The muse suite needs raw text: each author's answers joined into one passage (about 700 tokens) make the
forget and retain texts; two authors never learned (196-197) are the held-out texts. KnowMem asks the demo's
own forget and retain questions. The mcq suite asks the shipped TOFU sets (assets/mcq/) in the text format.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEMO = REPO / "assets" / "demo"
UNLEARN = {"method": "npo_rt", "lora": True, "max_steps": 60, "lr": 3e-4, "batch_size": 4,
           "method_params": {"retain_weight": 2.0}}   # the studio's demo defaults until 2026-12-01


def passages(rows: list[dict], per_author: int = 20) -> str:
    """One passage per author: its answers joined, authors separated by a blank line (a .txt file's passages)."""
    groups = [rows[i:i + per_author] for i in range(0, len(rows), per_author)]
    return "\n\n".join(" ".join(r["answer"] for r in group) for group in groups) + "\n"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def unlearn(cli: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "core.cli", *cli], check=True)


def main(argv=None) -> int:
    from core.config import UnlearnConfig
    from core.tofu import author_records
    from core.trainer import train

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-dir", default=str(REPO / "runs" / "suites_demo"))
    args = parser.parse_args(argv)
    root = Path(args.runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    texts = {"forget": root / "forget_passages.txt", "retain": root / "retain_passages.txt",
             "holdout": root / "holdout_passages.txt"}
    texts["forget"].write_text(passages(read_jsonl(DEMO / "forget.jsonl")))
    texts["retain"].write_text(passages(read_jsonl(DEMO / "retain.jsonl")))
    texts["holdout"].write_text(passages(author_records(196, 197)))
    started = time.time()
    run = root / "npo_rt"
    if not (run / "summary.json").is_file():
        train(UnlearnConfig(model="demo", forget=str(DEMO / "forget.jsonl"), retain=str(DEMO / "retain.jsonl"),
                            out=str(run), overwrite=True, **UNLEARN), show_progress=False, log=lambda m: None)
    train_seconds = time.time() - started
    common = ["--batch-size", "8", "--dtype", "auto"]
    unlearn(["eval", str(run), "--suite", "muse", "--forget", str(texts["forget"]), "--retain", str(texts["retain"]),
             "--holdout", str(texts["holdout"]), "--qa", str(DEMO / "forget.jsonl"), "--retain-qa",
             str(DEMO / "retain.jsonl"), "--attacks", "loss,zlib,reference,min_k,min_k_pp", "--max-new-tokens", "48",
             "--out", str(root / "muse"), *common])
    unlearn(["eval", str(run), "--suite", "mcq", "--forget", str(REPO / "assets/mcq/tofu_forget01.jsonl"), "--retain",
             str(REPO / "assets/mcq/tofu_retain_authors0-1.jsonl"), "--format", "text", "--out", str(root / "mcq"),
             *common])
    muse = json.loads((root / "muse" / "summary.json").read_text())
    mcq = json.loads((root / "mcq" / "summary.json").read_text())
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "unlearning": UNLEARN, "unlearn_seconds": round(train_seconds), "muse": muse, "mcq": mcq}
    out = REPO / "docs" / "results"
    (out / "suites_demo.json").write_text(json.dumps(result, indent=2))
    (out / "suites_demo.md").write_text(markdown(result, root))
    print((out / "suites_demo.md").read_text())
    return 0


def machine() -> str:
    import os

    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")] if Path("/proc/cpuinfo").is_file() else []
    return f"{names[0] if names else platform.processor()}, {os.cpu_count()} cores, no GPU"


def markdown(result: dict, root: Path) -> str:
    from core.evaluation.suites import get_suite

    muse, mcq = get_suite("muse").table(result["muse"]), get_suite("mcq").table(result["mcq"])
    return "\n".join([
        "# The muse and mcq suites on the demo model", "",
        f"{result['date']}, {result['machine']}; `python benchmarks/suites_demo.py`. Before: the demo model "
        "(SmolLM2-135M that learned TOFU authors 0-1 and 198-199; the run's base). After: its NPO+RT unlearning "
        f"of authors 198-199 with the studio's demo settings {json.dumps(result['unlearning'])} "
        f"({result['unlearn_seconds']} s).", "",
        "Texts for muse: each author's answers joined into one passage; held-out texts: authors 196-197, never "
        "learned. KnowMem asks the demo's forget and retain questions through the chat template.", "",
        "## muse", "", muse, "", "## mcq (text format)", "", mcq, "",
        "## What it shows", "",
        "- KnowMem is where this unlearning shows: the forget questions' answers lose most of their overlap "
        "with the truth while the retain answers keep most of theirs (MUSE's trade-off in one line).",
        "- VerbMem is low before and after: the demo model learned question/answer pairs, not the joined "
        "passages, so there is no verbatim text to forget here; the suite is meant for models trained on raw "
        "text (a book, articles).",
        "- The membership AUCs rest on two forget and two held-out passages (one per author): they can only "
        "be 0, 0.25, 0.5, 0.75 or 1 and say little; on real corpora give many texts.",
        "- The multiple-choice accuracy on the forget authors did not fall: NPO+RT lowered the likelihood of the "
        "answers as they are asked in the chat template, but asked as plain 'Question: ... Answer:' text, among "
        "perturbed alternatives, the model still prefers the true answers about as often as before. This is "
        "what the audit's rephrase attack is for.",
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
