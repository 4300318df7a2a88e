#!/usr/bin/env bash
# Speculative decoding with a draft model, ours next to llama.cpp's own `llama-speculative`, in
# one run (issue 22, acceptance 2): the default model SmolLM2-135M-Instruct stored wide (F32 and
# F16: its Q4_1 weights widened, what a user holding a full-precision checkpoint runs) as the
# target, its Q4_1 GGUF as the draft, greedy, up to 8 drafts per verify, 128 tokens of an
# open-ended answer (a short story: nothing to copy from the prompt) under the chat template.
#   ours      : `llama3 bench --draft` (plain and speculative decoding of the same request,
#               identical output checked), tokens/s mean over REPS after a warm-up;
#   llama.cpp : `llama-speculative` (decode speed and acceptance it prints) and `llama-bench`
#               tg128 for its plain decoding; 2 threads on both sides.
#
# Usage: scripts/draft_bench.sh
# Environment: REPS (3), N (128), DRAFT_MAX (8), TYPES ("f32 f16"), LLAMA3_BIN
#   (default target/release/llama3, built here).
set -euo pipefail
cd "$(dirname "$0")/.."
REPS="${REPS:-3}"
N="${N:-128}"
K="${DRAFT_MAX:-8}"
TYPES="${TYPES:-f32 f16}"
home="${LLAMA3_HOME:-$HOME/.cache/llama3}"
models="$home/bench-models"
mkdir -p "$models"
bin="${LLAMA3_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --bin llama3 >&2
  bin=target/release/llama3
fi
draft=$("$bin" pull 2>/dev/null | tail -1)
[ -f "$draft" ] || draft="$home/SmolLM2-135M-Instruct.Q4_1.gguf"
lcpp=$(scripts/build-llamacpp.sh)
# The chat prompt of `llama3 bench --draft`, as SmolLM2's template renders it.
prompt=$'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWrite a short story about a lighthouse keeper who finds a message in a bottle.<|im_end|>\n<|im_start|>assistant\n'
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "| target | draft | ours plain | ours draft | speedup | accepted | llama.cpp plain | llama.cpp draft | speedup | accepted | ours / llama.cpp (draft) |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for t in $TYPES; do
  target="$models/SmolLM2-135M-Instruct-${t^^}.gguf"
  [ -f "$target" ] || "$bin" quantize --type "$t" "$draft" "$target" >&2
  "$bin" bench -m "$target" -p 0 -n "$N" -r "$REPS" -t 2 --draft "$draft" --draft-max "$K" --json \
    >"$work/ours.json"
  "$lcpp/llama-bench" -m "$target" -p 0 -n "$N" -r "$REPS" -t 2 -o json >"$work/lb.json" 2>/dev/null
  spec_speed=()
  for r in $(seq 1 "$REPS"); do
    "$lcpp/llama-speculative" -m "$target" -md "$draft" -p "$prompt" -n "$N" \
      --spec-draft-n-max "$K" --temp 0 -t 2 -c 1024 >"$work/spec.txt" 2>&1
    spec_speed+=("$(grep -o 'decoded .* speed: *[0-9.]*' "$work/spec.txt" | grep -o '[0-9.]*$')")
  done
  acc=$(grep -o 'n_accept *= *[0-9]*' "$work/spec.txt" | grep -o '[0-9]*$')
  drafted=$(grep -o 'n_drafted *= *[0-9]*' "$work/spec.txt" | grep -o '[0-9]*$')
  python3 - "$work/ours.json" "$work/lb.json" "$t" "$acc" "$drafted" "${spec_speed[@]}" <<'PY'
import json, statistics, sys
ours = json.load(open(sys.argv[1]))["draft"]
lb = json.load(open(sys.argv[2]))
t, acc, drafted = sys.argv[3], sys.argv[4], sys.argv[5]
spec = statistics.mean(float(x) for x in sys.argv[6:])
plain = [r for r in lb if r["n_gen"] > 0][0]["avg_ts"]
a, b = ours["open_task_tokens_per_second"]["mean"], ours["open_task_draft_tokens_per_second"]["mean"]
print(f"| {t.upper()} | Q4_1 | {a:.1f} | {b:.1f} | {b / a:.2f}x | {ours['accepted']}/{ours['drafts']} "
      f"| {plain:.1f} | {spec:.1f} | {spec / plain:.2f}x | {acc}/{drafted} | {b / spec:.2f} |")
PY
done
