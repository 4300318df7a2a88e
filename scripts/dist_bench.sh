#!/usr/bin/env bash
# Data-parallel training speed on this machine (issue 20, acceptance 2): tokens/s of one rank
# with 2 threads against 2 ranks (mpirun -np 2) with 1 thread each, at equal work: the same
# preset, the same global batch of 2 micro-batches of B x T tokens per step, the same data
# (so the same losses), from one run, alternated (1x2, 2x1, 1x2, 2x1, ...) so that machine
# noise hits both alike. Also one rank x 2 threads taking the step in one micro-batch of 2B.
#   tok/s   : global batch tokens / step time, mean +- sd over the steps after WARMUP;
#   comm    : seconds per step rank 0 spent in collectives (the gradient all-reduce and the
#             few numbers the ranks agree on), from metrics.jsonl's comm_s;
#   wait    : seconds per step rank 0 waited for the other rank to finish its micro-batch
#             (load imbalance, noise), wait_s.
#
# Usage: scripts/dist_bench.sh
# Environment: PRESET (15m), B (4), T (256), STEPS (12), WARMUP (2), REPS (2),
#   LLAMA3_MPI_BIN (default: target/release/llama3-mpi, built here with --features mpi).
set -euo pipefail
cd "$(dirname "$0")/.."

PRESET="${PRESET:-15m}"
B="${B:-4}"
T="${T:-256}"
STEPS="${STEPS:-12}"
WARMUP="${WARMUP:-2}"
REPS="${REPS:-2}"
data=../shared/data/sotu/data
tok=../shared/data/llama-vocab-gguf/ggml-vocab-llama-spm.gguf
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

bin="${LLAMA3_MPI_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release -p llama3-cli --features mpi --bin llama3 >&2
  cp target/release/llama3 target/release/llama3-mpi
  bin="$PWD/target/release/llama3-mpi"
fi
command -v mpirun >/dev/null || { echo "no mpirun: install Open MPI (Debian: openmpi-bin libopenmpi-dev)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
common=(train --data_path "$data" --tokenizer "$tok" --init "$PRESET" --seq-len "$T"
  --max-steps "$STEPS" --warmup 2 --eval-every 0 --save-every 0)
# Tokenize once, outside the timings.
"$bin" "${common[@]}" --batch-size "$B" --max-steps 1 --model_path "$work/warm" >/dev/null 2>&1
cache=$(ls -d "$work/warm/cache")

run() { # name, run dir, command...
  local name=$1 dir=$2
  shift 2
  mkdir -p "$dir"
  cp -r "$cache" "$dir/cache"
  "$@" >"$dir.log" 2>&1 || { cat "$dir.log" >&2; exit 1; }
  echo "$name $dir" >>"$work/runs"
}
for r in $(seq 1 "$REPS"); do
  run "1x2" "$work/a$r" env RAYON_NUM_THREADS=2 "$bin" "${common[@]}" --batch-size "$B" --grad-accum 2 --model_path "$work/a$r"
  run "2x1" "$work/b$r" mpirun --oversubscribe -np 2 "$bin" "${common[@]}" --batch-size "$B" --model_path "$work/b$r"
  run "1x2-one-micro-batch" "$work/c$r" env RAYON_NUM_THREADS=2 "$bin" "${common[@]}" --batch-size $((2 * B)) --model_path "$work/c$r"
done

python3 - "$work/runs" "$WARMUP" "$PRESET" "$B" "$T" <<'PY'
import json, statistics, sys
runs, warmup, preset, b, t = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
by = {}
for line in open(runs):
    name, d = line.split()
    recs = [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
    steps = [r for r in recs if r["kind"] == "train"][warmup:]
    e = by.setdefault(name, {"tps": [], "comm": [], "wait": [], "loss": None})
    e["tps"] += [s["tokens_per_s"] for s in steps]
    e["comm"] += [s.get("comm_s", 0.0) for s in steps]
    e["wait"] += [s.get("wait_s", 0.0) for s in steps]
    e["loss"] = steps[-1]["loss"]
print(f"preset {preset}, global batch 2 x {b} x {t} tokens per step, mean +- sd over steps")
print("| ranks x threads | tok/s | step s | collectives s/step | wait s/step | last loss |")
print("| --- | --- | --- | --- | --- | --- |")
for name, e in by.items():
    sd = statistics.stdev(e["tps"]) if len(e["tps"]) > 1 else 0.0
    step = 2 * int(b) * int(t) / statistics.mean(e["tps"])
    print(f"| {name} | {statistics.mean(e['tps']):.0f} +- {sd:.0f} | {step:.2f} | "
          f"{statistics.mean(e['comm']):.3f} | {statistics.mean(e['wait']):.3f} | "
          f"{e['loss']:.6f} |")
a, m = statistics.mean(by["1x2"]["tps"]), statistics.mean(by["2x1"]["tps"])
print(f"2 ranks x 1 thread / 1 rank x 2 threads: {m / a:.2f}")
PY
