#!/bin/bash
# The planner checked on the machine at hand (issue 24): measure this CPU, run bench latency
# at batch 1 and 16 in alternation (a shared machine: load recorded before every run), one
# batch-4 latency run and one throughput run as further held-out workloads, then calibrate on
# the batch-1 runs and compare every run with the prediction.
# Usage: benchmarks/planner_local_cpu.sh MODEL_DIR [OUT_DIR]   (from the repository root)
set -euo pipefail
MODEL=${1:?usage: $0 MODEL_DIR [OUT_DIR]}
OUT=${2:-benchmarks/results/planner_local_cpu}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-src} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export MEMBOUND_CACHE_DIR="$OUT"            # the local-device record lands in $OUT
MB="python -m membound.entrypoints.cli"
LEN="--input-len 128 --output-len 64 --max-model-len 512 --disable-tqdm"
load() { echo "--- $(date -u +%FT%TZ) $1; uptime:$(uptime | sed 's/.*load average/ load average/')"; }
echo "commit $(git rev-parse HEAD) dirty=$(git status --porcelain --untracked-files=no | wc -l)"
load "probe"
$MB plan --gpu local --remeasure --local-device cpu --model "$MODEL" --precision fp32 \
    --kv-dtype fp32 --input-len 128 --output-len 64
for round in 1 2; do
  for b in 1 16; do
    load "latency batch $b round $round"
    $MB bench latency "$MODEL" --batch-size $b $LEN --num-iters 2 --max-num-seqs 16 \
        --output-json "$OUT/latency_b${b}_r${round}.json"
  done
done
load "latency batch 4"
$MB bench latency "$MODEL" --batch-size 4 $LEN --num-iters 2 --output-json "$OUT/latency_b4.json"
load "throughput 32 prompts"
$MB bench throughput "$MODEL" --num-prompts 32 --input-len 128 --output-len 32 \
    --max-num-seqs 16 --max-model-len 512 --disable-tqdm --output-json "$OUT/throughput_n32.json"
load "end"
cd "$OUT"
echo "=== uncalibrated (the probe's ceilings, default efficiencies)"
$MB plan compare latency_*.json throughput_*.json
echo "=== calibrate on the batch-1 runs"
$MB plan calibrate latency_b1_r1.json latency_b1_r2.json -o calibration_b1.json
echo "=== calibrated on batch 1: every run (batch 16, 4 and throughput are held out)"
$MB plan compare latency_*.json throughput_*.json --calibration calibration_b1.json
$MB plan compare latency_*.json throughput_*.json --calibration calibration_b1.json --json \
    > compare_calibrated_b1.json
$MB plan compare latency_*.json throughput_*.json --json > compare_uncalibrated.json
