#!/usr/bin/env bash
# GPU benchmark of the real-size model (random weights, 480x832, bf16): DiT per policy and video
# length, eager and compiled, the random-weight Wan VAE decode, peak memory, host reads per
# chunk, a check that no pass synchronises with the GPU, and a short summary table last.
# Usage: bash benchmarks/gpu.sh [OUT_DIR]   (needs a CUDA GPU; about 8 minutes on an H100)
set -euo pipefail
out="${1:-benchmark-results}"
mkdir -p "$out"
python -m pip install -q -e ".[real]"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
export PYTHONUNBUFFERED=1
common=(--preset wan2.1-t2v-1.3b --device cuda --dtype bfloat16 --random-vae --chunks 2
    --policies window sink head_forcing --seconds 5 30 60 120)
headforcing bench "${common[@]}" --json "$out/bench_eager.json" | tee "$out/bench_eager.md"
headforcing bench "${common[@]}" --compile --json "$out/bench_compiled.json" \
    | tee "$out/bench_compiled.md"
python benchmarks/gpu_checks.py syncs --device cuda | tee "$out/syncs.txt"
python benchmarks/gpu_checks.py summary "$out/bench_eager.json" "$out/bench_compiled.json" \
    | tee "$out/summary.md"
