#!/bin/bash
# The planner checked on the machine at hand (issue 24): measure this CPU, run bench latency
# at batch 1 and 16 in alternation (a shared machine: load recorded before every run), one
# batch-4 latency run and one throughput run as further held-out workloads, then calibrate on
# the batch-1 runs and compare every run with the prediction.
# Usage: benchmarks/planner_local_cpu.sh MODEL_DIR [OUT_DIR]   (from the repository root;
# ANALYZE_ONLY=1 re-runs only the calibrate/compare steps on the JSON already in OUT_DIR)
set -euo pipefail
MODEL=${1:?usage: $0 MODEL_DIR [OUT_DIR]}
OUT=${2:-benchmarks/results/planner_local_cpu}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH=${PYTHONPATH:-$PWD/src} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export MEMBOUND_CACHE_DIR="$OUT"            # the local-device record lands in $OUT
MB="python -m membound.entrypoints.cli"
LEN="--input-len 128 --output-len 64 --max-model-len 512 --disable-tqdm"
load() { echo "--- $(date -u +%FT%TZ) $1; uptime:$(uptime | sed 's/.*load average/ load average/')"; }
if [ -z "${ANALYZE_ONLY:-}" ]; then   # ANALYZE_ONLY=1: only the calibrate/compare steps
echo "commit $(git rev-parse HEAD) dirty=$(git status --porcelain --untracked-files=no | wc -l)"
if [ -z "${SKIP_PROBE:-}" ]; then   # SKIP_PROBE=1: keep the record already in OUT_DIR
load "probe"
$MB plan --gpu local --remeasure --local-device cpu --model "$MODEL" --precision fp32 \
    --kv-dtype fp32 --input-len 128 --output-len 64
fi
for round in ${ROUNDS:-1 2}; do
  for b in 1 16; do
    load "latency batch $b round $round"
    $MB bench latency "$MODEL" --batch-size $b $LEN --num-iters 2 --max-num-seqs 16 \
        --output-json "$OUT/latency_b${b}_r${round}.json"
  done
done
if [ -z "${SKIP_EXTRA:-}" ]; then   # SKIP_EXTRA=1: only the batch-1/16 rounds
load "latency batch 4"
$MB bench latency "$MODEL" --batch-size 4 $LEN --num-iters 2 --output-json "$OUT/latency_b4.json"
load "throughput 32 prompts"
$MB bench throughput "$MODEL" --num-prompts 32 --input-len 128 --output-len 32 \
    --max-num-seqs 16 --max-model-len 512 --disable-tqdm --output-json "$OUT/throughput_n32.json"
fi
load "end"
fi
analyze() {
cd "$OUT"
echo "=== uncalibrated (the probe's ceilings, default efficiencies)"
$MB plan compare latency_*.json throughput_*.json
for b1 in latency_b1_r*.json; do   # each batch-1 run predicts the batch-16 run after it
  r=${b1#latency_b1_r}; r=${r%.json}
  echo "=== round $r: calibrate on $b1 alone, predict latency_b16_r$r.json (held out)"
  $MB plan calibrate "$b1" -o "calibration_b1_r$r.json" > /dev/null
  $MB plan compare "$b1" "latency_b16_r$r.json" --calibration "calibration_b1_r$r.json"
done
echo "=== calibrate on every batch-1 run"
$MB plan calibrate latency_b1_r*.json -o calibration_b1.json
echo "=== calibrated on batch 1: every run (batch 16, 4 and throughput are held out)"
$MB plan compare latency_*.json throughput_*.json --calibration calibration_b1.json
$MB plan compare latency_*.json throughput_*.json --calibration calibration_b1.json --json \
    > compare_calibrated_b1.json
$MB plan compare latency_*.json throughput_*.json --json > compare_uncalibrated.json
}
analyze
