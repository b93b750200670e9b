#!/usr/bin/env bash
# GPU benchmark of the real-size model (random weights, 480x832, bf16): DiT per policy and video
# length, eager, compiled and as CUDA graphs (reduce-overhead), the random-weight Wan VAE
# decode, peak memory, ATen ops and host reads per chunk, the Wan-depth skeleton (launch cost),
# a check that no pass or end_chunk synchronises with the GPU, and a short summary table last.
# Usage: bash benchmarks/gpu.sh [OUT_DIR]   (needs a CUDA GPU; about 12 minutes on an H100)
set -euo pipefail
out="${1:-benchmark-results}"
mkdir -p "$out"
python -m pip install -q -e ".[real]"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
export PYTHONUNBUFFERED=1
policies=(--policies window sink head_forcing deep_forcing pyramid_forcing)
common=(--preset wan2.1-t2v-1.3b --device cuda --dtype bfloat16 --random-vae --chunks 2
    "${policies[@]}" --seconds 5 30 120)
python benchmarks/gpu_checks.py syncs --device cuda | tee "$out/syncs.txt"
headforcing bench "${common[@]}" --json "$out/bench_eager.json" | tee "$out/bench_eager.md"
headforcing bench "${common[@]}" --compile --json "$out/bench_compiled.json" \
    | tee "$out/bench_compiled.md"
headforcing bench "${common[@]}" --compile reduce-overhead --json "$out/bench_graphs.json" \
    | tee "$out/bench_graphs.md"
# Wan's 30 layers x 12 heads with negligible arithmetic: what is left is launch overhead
headforcing bench --preset wan-skeleton --device cuda --dtype bfloat16 --chunks 4 \
    "${policies[@]}" --seconds 30 --json "$out/bench_skeleton.json" | tee "$out/bench_skeleton.md"
python benchmarks/gpu_checks.py summary "$out/bench_eager.json" "$out/bench_compiled.json" \
    "$out/bench_graphs.json" "$out/bench_skeleton.json" | tee "$out/summary.md"
