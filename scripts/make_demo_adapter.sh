#!/usr/bin/env bash
# Remake assets/demo/adapter: a LoRA adapter that teaches the bundled SmolLM2-135M-Instruct four fictitious
# TOFU authors (assets/demo/learn.jsonl: the forget01 authors 198-199 and the retain authors 0-1), so the
# studio's default demo has something real to forget. About 15-30 minutes on a 2-core CPU.
#   bash scripts/make_demo_adapter.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/demo-adapter
.venv/bin/unlearn train --method sft --model bundled --forget assets/demo/learn.jsonl --out "$out" --overwrite \
  --lora --lora-r 16 --lora-alpha 32 --lr 1e-3 --epochs 15 --batch-size 8 --warmup-ratio 0.05 \
  --eval-examples 80 --save-steps 20 --device "${DEVICE:-auto}"
.venv/bin/python - "$out" <<'PY'
import shutil, sys
from pathlib import Path
# Ship the adapter in fp16 (half the size; LoRA deltas are small numbers) with its config, no tokenizer.
from safetensors.torch import load_file, save_file
src, dst = Path(sys.argv[1]) / "model", Path("assets/demo/adapter")
dst.mkdir(parents=True, exist_ok=True)
weights = {k: v.half().contiguous() for k, v in load_file(str(src / "adapter_model.safetensors")).items()}
save_file(weights, str(dst / "adapter_model.safetensors"))
shutil.copy(src / "adapter_config.json", dst / "adapter_config.json")
print("wrote", dst)
PY
