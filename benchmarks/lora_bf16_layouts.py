"""Why LoRA's frozen base is laid out as it is under bf16 mixed precision: the same short LoRA NPO+RT run
with four layouts of the base, its forget-NLL curve against fp32's and its seconds per step.

    python benchmarks/lora_bf16_layouts.py            # 10 steps each (~3 min on 2 idle cores)
    python benchmarks/lora_bf16_layouts.py --steps 3  # a quick look

Layouts: fp32 (seeds 42 and 43: the reference and its data-order noise); the whole base in bf16 (the
layout before session 5); only the blocks' linears in bf16, embeddings and norms fp32; and the chosen one,
`core.models.frozen_linears_in_bf16` (bf16 linears whose outputs are upcast to fp32). Data: the first 8
QA of TOFU authors 198-199 (forget) and of author 0 (retain), bundled model, batch 4, lr 3e-4.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

LAYOUTS = ("fp32", "fp32 seed 43", "whole base bf16", "bf16 linears", "bf16 linears, fp32 outputs")


def write_data(root: Path) -> tuple[str, str]:
    from core.tofu import author_records

    paths = []
    for name, rows in (("forget", author_records(198, 199)[:8]), ("retain", author_records(0, 0)[:8])):
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n" for r in rows))
        paths.append(str(path))
    return paths[0], paths[1]


def load_with(layout: str):
    """The trainer's load_model, replaced so that the base comes out in `layout`."""
    from core.models import load_model

    def load(source, dtype=torch.float32, trust_remote_code=False):
        if layout == "whole base bf16":
            return load_model(source, torch.bfloat16)
        model = load_model(source, torch.float32)
        if layout == "bf16 linears":
            for module in model.model.layers.modules():
                if isinstance(module, torch.nn.Linear):
                    module.to(torch.bfloat16)
        return model
    return load


def run(layout: str, steps: int, forget: str, retain: str, out: Path) -> dict:
    import core.trainer as trainer
    from core.config import UnlearnConfig

    # the trainer applies the chosen layout itself under bf16; the other bf16 layouts replace it by a no-op
    bf16 = layout not in ("fp32", "fp32 seed 43")
    original_load, original_layout = trainer.load_model, trainer.frozen_linears_in_bf16
    if layout in ("whole base bf16", "bf16 linears"):
        trainer.load_model, trainer.frozen_linears_in_bf16 = load_with(layout), lambda model: 0
    try:
        config = UnlearnConfig(model="bundled", method="npo_rt", forget=forget, retain=retain, out=str(out),
                               max_steps=steps, batch_size=4, lr=3e-4, lora=True, save_steps=0, eval_examples=0,
                               device="cpu", dtype="bfloat16" if bf16 else "float32",
                               seed=43 if layout == "fp32 seed 43" else 42)
        trainer.train(config, show_progress=False, log=lambda message: None)
    finally:
        trainer.load_model, trainer.frozen_linears_in_bf16 = original_load, original_layout
    from core.runs import RunDir

    rows = RunDir(out).metrics()
    walls = [row["wall_time"] for row in rows]
    return {"seconds_per_step": (walls[-1] - walls[0]) / max(len(walls) - 1, 1),
            "forget_nll": [row["forget_nll"] for row in rows]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lora-layouts-") as tmp:
        root = Path(tmp)
        forget, retain = write_data(root)
        results = {layout: run(layout, args.steps, forget, retain, root / f"run{i}")
                   for i, layout in enumerate(LAYOUTS)}
    reference = results["fp32"]["forget_nll"]
    print(f"{'layout':<28} {'s/step':>7} {'last forget NLL':>16} {'largest gap to fp32':>20}")
    for layout, result in results.items():
        gap = max(abs(a - b) for a, b in zip(reference, result["forget_nll"]))
        print(f"{layout:<28} {result['seconds_per_step']:>7.2f} {result['forget_nll'][-1]:>16.2f} {gap:>20.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
