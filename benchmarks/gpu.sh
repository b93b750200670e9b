#!/usr/bin/env bash
# GPU benchmark of the real-size model (random weights, 480x832, bf16): DiT per policy and video
# length, the random-weight Wan VAE decode, peak memory, and the plain-SDPA reference pass.
# Usage: bash benchmarks/gpu.sh [OUT_DIR]   (needs a CUDA GPU; ~5 minutes on an H100)
set -euo pipefail
out="${1:-benchmark-results}"
mkdir -p "$out"
python -m pip install -q -e ".[real]"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
PYTHONUNBUFFERED=1 headforcing bench --preset wan2.1-t2v-1.3b --device cuda --dtype bfloat16 \
    --random-vae --seconds 5 30 60 120 --chunks 2 | tee "$out/bench_wan.md"
