"""How well one setting of the studio's demo forgets: train on the demo model with the "TOFU authors (demo)"
example, then compare greedy answers of the original and the unlearned model on the first 10 forget and 10
retain questions (ROUGE-L recall of the true answer, as TOFU scores it). The studio's defaults
(studio/tabs/train.py) were chosen with this.

    python benchmarks/demo_defaults.py '{"max_steps": 60, "lr": 3e-4, "retain_weight": 2.0}'
    python benchmarks/demo_defaults.py '{"max_steps": 30, "lr": 5e-4}' --method npo_kl
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

FORGET, RETAIN = REPO / "assets/demo/forget.jsonl", REPO / "assets/demo/retain.jsonl"


def mean_recall(prober, path: Path, n: int) -> tuple[float, float]:
    """Mean ROUGE-L recall of the true answers: (original model, unlearned model)."""
    from core.data import load_examples

    rows = prober.leak_report(load_examples(str(path), "probe")[:n], max_new_tokens=32)
    return (sum(r["rouge_before"] for r in rows) / len(rows), sum(r["rouge_after"] for r in rows) / len(rows))


def main(argv=None) -> int:
    from core.config import UnlearnConfig
    from core.probe import load_prober
    from core.trainer import train

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("settings", help='JSON of UnlearnConfig settings, e.g. \'{"max_steps": 60, "lr": 3e-4}\'')
    parser.add_argument("--method", default="npo_rt")
    parser.add_argument("--questions", type=int, default=10, help="forget and retain questions probed (default 10)")
    args = parser.parse_args(argv)
    settings = json.loads(args.settings)
    with tempfile.TemporaryDirectory(prefix="demo-defaults-") as tmp:   # a 0.5 GB run per call
        out = Path(tmp) / "run"
        started = time.time()
        base = {"model": "demo", "method": args.method, "forget": str(FORGET), "retain": str(RETAIN),
                "out": str(out), "lora": True, "batch_size": 4, "logging_steps": 5}
        result = train(UnlearnConfig.from_dict({**base, **settings}),   # hyper-parameters may stand at the top level
                       show_progress=False, log=lambda message: None)
        seconds = time.time() - started
        prober = load_prober(out)
        forget, retain = mean_recall(prober, FORGET, args.questions), mean_recall(prober, RETAIN, args.questions)
        del prober
    print(json.dumps({"method": args.method, "settings": settings, "train_seconds": round(seconds),
                      "nll_before": result.summary["before"], "nll_after": result.summary["after"],
                      "forget_rougeL": [round(v, 3) for v in forget], "retain_rougeL": [round(v, 3) for v in retain]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
