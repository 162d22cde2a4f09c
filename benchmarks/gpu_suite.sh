#!/usr/bin/env bash
# Every GPU figure the README's Speed table asks for, in one call on a CUDA machine:
#   bash benchmarks/gpu_suite.sh [OUT_DIR]
# Each benchmark runs in turn with its output kept in OUT_DIR (default: gpu-figures/); one that
# fails (weights not in the Hugging Face cache, say) is reported and the rest still run.
# Record the figures in the README with the card named (nvidia-smi's first line is saved too).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu-figures}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/card.txt" 2>&1 || {
  echo "no CUDA GPU here (nvidia-smi failed); nothing to measure" >&2
  exit 2
}
echo "card: $(cat "$OUT/card.txt")"

failed=()
step() {  # step NAME COMMAND...: run one benchmark, keep its output, go on on failure
  local name="$1"
  shift
  echo "== $name: $*"
  if "$@" >"$OUT/$name.txt" 2>&1; then
    tail -n 25 "$OUT/$name.txt"
  else
    echo "   FAILED (exit $?); see $OUT/$name.txt:"
    tail -n 5 "$OUT/$name.txt"
    failed+=("$name")
  fi
}

# call_neuron against a bare forward pass (budget >= 0.9), ResNet-152 at batch 64.
step call_neuron "$PY" benchmarks/bench_call_neuron.py --target resnet152 --batch 64 --batches 8 --device cuda
# Exemplars over all four ResNet-152 stages at batch 128 (budget >= 0.9 of a bare pass).
step exemplars "$PY" benchmarks/bench_exemplars.py --target resnet152 --layers layer1,layer2,layer3,layer4 \
  --batch 128 --images 1024 --workers 8 --device cuda
# The offline synthetic detector on the GPU (budget <= 1.2x a bare pass).
step synthetic "$PY" benchmarks/bench_synthetic.py --device cuda --batch 64 --batches 8
# Grounded-SAM synthetic neurons (needs IDEA-Research/grounding-dino-tiny and facebook/sam-vit-huge cached).
step grounded_sam "$PY" benchmarks/bench_synthetic.py --grounded-sam --batch 8 --batches 3
# FLUX and SDXL-Turbo text2image, FLUX Kontext and InstructPix2Pix editing (weights cached).
step diffusers "$PY" benchmarks/bench_diffusers.py --models flux,sdxl-turbo,flux-kontext,instruct-pix2pix --images 8
# Many investigations sharing one host on this GPU: speedup and memory at N = 1, 4, 8, 16.
step concurrency "$PY" benchmarks/bench_concurrency.py --units 16 --levels 1,4,8,16 --json "$OUT/concurrency.json"
# The GPU-only tests (skipped on a CPU machine).
step gpu_tests "$PY" -m pytest -q -m gpu -p no:cacheprovider

if [ "${#failed[@]}" -gt 0 ]; then
  echo "failed: ${failed[*]}"
  exit 1
fi
echo "all GPU figures in $OUT/"
