#!/usr/bin/env bash
# The GPU check (issue 33): what this project has never run on a CUDA GPU, in one script that fits ~10 minutes
# on one H100, writing docs/results/gpu_check.md. Run it from the repository root on a machine with the venv
# set up (bash scripts/setup.sh --bench):
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine: every check, the figures recorded
#   bash benchmarks/gpu_check.sh --dry-run       # anywhere: the same steps on the CPU, a few steps each,
#                                                # results in $OUT (default /tmp/gpu_check) only
#
# Steps (each one's wall time and exit code recorded; a failing step does not stop the others):
#   1. the device: nvidia-smi, torch's view of CUDA and bf16
#   2. NPO+RT on the bundled model in bf16, full fine-tuning and LoRA (TOFU forget01 / retain99)
#   3. QLoRA: the same with --load-in-4bit --lora, and `unlearn plan`'s estimate beside its peak
#   4. the trainer benchmark against open-unlearning's NPO (benchmarks/trainer.py --device cuda)
#   5. 2-process DDP (accelerate launch) when two GPUs are present
#   6. the studio's demo run (the demo model, its measured settings)
#   7. export of the demo run (HF and ONNX) with parity checked on CUDA
# Environment: MODEL (default bundled), STEPS (default 40; the dry run 2), OUT (default runs/gpu_check),
# FORGET / RETAIN (default TOFU forget01 / retain99), ONLY (comma-separated step names: run just those).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
for flag in "$@"; do
  case "$flag" in
    --dry-run) DRY_RUN=1 ;;
    *) echo "error: unknown option $flag (use --dry-run)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-.venv/bin/python}
MODEL=${MODEL:-bundled}
if [ "$DRY_RUN" = 1 ]; then
  DEVICE=cpu; DTYPE=float32; STEPS=${STEPS:-2}; OUT=${OUT:-/tmp/gpu_check}; REPORT=$OUT/gpu_check.md
  FORGET=${FORGET:-tofu:forget01}; RETAIN=${RETAIN:-tofu:retain99}; BENCH_FLAGS="--quick --device cpu --variants ours"
else
  DEVICE=cuda; DTYPE=bfloat16; STEPS=${STEPS:-40}; OUT=${OUT:-runs/gpu_check}; REPORT=docs/results/gpu_check.md
  FORGET=${FORGET:-tofu:forget01}; RETAIN=${RETAIN:-tofu:retain99}; BENCH_FLAGS="--device cuda --dtype auto"
fi
mkdir -p "$OUT"
LOG=$OUT/steps.tsv
: > "$LOG"

train() {  # train NAME FLAGS...: one unlearning run into $OUT/NAME
  local name=$1; shift
  "$PY" -m unlearn train --model "$MODEL" --method npo_rt --forget "$FORGET" --retain "$RETAIN" \
    --out "$OUT/$name" --overwrite --max-steps "$STEPS" --batch-size 4 --lr 1e-5 --device "$DEVICE" \
    --dtype "$DTYPE" --save-steps 0 "$@"
}

step() {  # step NAME COMMAND...: run it, record seconds and exit code, keep its output in $OUT/NAME.log
  local name=$1; shift
  if [ -n "${ONLY:-}" ] && [[ ",$ONLY," != *",$name,"* ]]; then
    printf '%s\t0\tskipped (not in ONLY)\n' "$name" >> "$LOG"
    return 0
  fi
  local started=$SECONDS
  echo "== $name: $*"
  "$@" > "$OUT/$name.log" 2>&1
  local code=$?
  printf '%s\t%s\t%s\n' "$name" "$((SECONDS - started))" "$code" >> "$LOG"
  tail -n 3 "$OUT/$name.log"
  return 0
}

device_info() {
  if [ "$DRY_RUN" = 0 ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
  "$PY" -c 'import torch; ok = torch.cuda.is_available(); print("torch", torch.__version__, "cuda", ok,
    torch.cuda.get_device_name(0) if ok else "-", "bf16", ok and torch.cuda.is_bf16_supported(),
    "gpus", torch.cuda.device_count())'
}

gpus() { "$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0; }

step device device_info
step npo_rt_full train npo_rt_full
step npo_rt_lora train npo_rt_lora --lora
step qlora train qlora --lora --load-in-4bit
step plan_qlora "$PY" -m unlearn plan --model "$MODEL" --method npo_rt --lora --load-in-4bit --device "$DEVICE" \
  --batch-size 4 --max-length 256 --json
step trainer_bench "$PY" benchmarks/trainer.py $BENCH_FLAGS --json "$OUT/trainer.json"
if [ "$DRY_RUN" = 0 ] && [ "$(gpus)" -ge 2 ] && { [ -z "${ONLY:-}" ] || [[ ",$ONLY," == *",ddp,"* ]]; }; then
  step ddp "$PY" -m accelerate.commands.launch --config_file configs/accelerate/ddp.yaml --num_processes 2 \
    -m core.cli train --model "$MODEL" --method npo_rt --forget "$FORGET" --retain "$RETAIN" \
    --out "$OUT/ddp" --overwrite --max-steps "$STEPS" --batch-size 4 --device cuda --dtype bfloat16 --save-steps 0
else
  printf 'ddp\t0\tskipped (fewer than 2 GPUs)\n' >> "$LOG"
fi
step demo_run "$PY" -m unlearn train --model demo --method npo_rt --forget assets/demo/forget.jsonl \
  --retain assets/demo/retain.jsonl --out "$OUT/demo" --overwrite --lora --lr 5e-4 --retain-weight 6 \
  --max-steps "$STEPS" --device "$DEVICE" --dtype "$DTYPE" --save-steps 0
step export_parity "$PY" -m unlearn export "$OUT/demo" --out "$OUT/demo_bundle" --formats hf,onnx --overwrite --json

{
  echo "# GPU check"
  echo
  echo "$(date -u +%Y-%m-%d), \`bash benchmarks/gpu_check.sh$([ "$DRY_RUN" = 1 ] && echo ' --dry-run')\` on" \
       "$(device_info 2>/dev/null | tr '\n' ' ')"
  echo
  echo "| step | seconds | exit code |"
  echo "|---|---|---|"
  awk -F'\t' '{ printf "| %s | %s | %s |\n", $1, $2, $3 }' "$LOG"
  echo
  echo "Each step's output: \`$OUT/STEP.log\`; the trainer benchmark's figures: \`$OUT/trainer.json\`."
  for run in npo_rt_full npo_rt_lora qlora demo; do
    if [ -f "$OUT/$run/summary.json" ]; then
      "$PY" - "$OUT/$run" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
summary = json.loads((run / "summary.json").read_text())
before, after = summary.get("before", {}), summary.get("after", {})
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
speed = [r["tokens_per_second"] for r in rows if "tokens_per_second" in r]
print(f"- {run.name}: forget NLL {before.get('forget_nll', float('nan')):.3f} -> {after.get('forget_nll', float('nan')):.3f}, "
      f"retain NLL {before.get('retain_nll', float('nan')):.3f} -> {after.get('retain_nll', float('nan')):.3f}, "
      f"{speed[-1] if speed else '-'} tokens/s at the end, {summary.get('wall_seconds', '-')} s")
EOF
    fi
  done
} > "$REPORT"
echo "report: $REPORT"
awk -F'\t' '$3 != 0 && $3 !~ /skipped/ { bad = 1 } END { exit bad }' "$LOG"
