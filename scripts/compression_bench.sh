#!/usr/bin/env bash
# Pruning and distillation of the default model (SmolLM2-135M-Instruct), measured in one run
# (issue 21, acceptance 1; the table in docs/compression.md):
#   dense          the default model's weights as an f32 HF directory (`prune --drop-layers 0`)
#   depth -4, -8   `llama3 prune --drop-layers N` (ShortGPT block influence)
#   MLP 75%        `llama3 prune --ffn-keep 0.75`
#   heads 67%      `llama3 prune --heads-keep 0.67` (whole KV groups: 2 of SmolLM2-135M's 3)
#   ... + KD       each again after a short distillation from the dense model
#                  (`llama3 train --init PRUNED --teacher DENSE`, KD_STEPS steps of 4 x 128 tokens)
#   Wanda 50%, 2:4 `llama3 prune --sparsity 0.5` / `--pattern 2:4` (dense storage)
# Calibration and distillation text: State of the Union addresses up to 2000 (the held-out
# file holds the last ten). Every model is exported to a Q8_0 GGUF, and measured there:
# parameters, file size, pp512 and tg128 (`llama3 bench`, REPS repetitions), held-out
# perplexity (`llama3 perplexity`, llama.cpp's protocol, the first CHUNKS chunks of 512), and
# whether llama.cpp (`llama-simple`) continues a prompt with our greedy text.
#
# Usage: scripts/compression_bench.sh [OUT_DIR]
# Environment: KD_STEPS (30), CHUNKS (50), REPS (2), LLAMA3_BIN (target/release/llama3),
# MODEL (the model to compress; default the default model; e.g. the 15m preset trained on the
# State of the Union as the README shows), HEADS_KEEP (0.67), DROP (layers dropped, "4 8").
set -euo pipefail
cd "$(dirname "$0")/.."
KD_STEPS="${KD_STEPS:-30}"
CHUNKS="${CHUNKS:-50}"
REPS="${REPS:-2}"
HEADS_KEEP="${HEADS_KEEP:-0.67}"
DROP="${DROP:-4 8}"
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
bin="${LLAMA3_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --bin llama3 >&2
  bin=target/release/llama3
fi
lcpp=$(scripts/build-llamacpp.sh)
model="${MODEL:-$("$bin" pull 2>/dev/null | tail -1)}"
sotu=../shared/data/sotu
heldout=$sotu/heldout-last10.txt
calib="$out/calib.txt"
mkdir -p "$out/train"
for f in "$sotu"/data/1*.txt "$sotu"/data/2000_*.txt; do cat "$f"; echo; done >"$calib"
cp "$calib" "$out/train/"
prompt="Fellow citizens of the Senate and House of Representatives"

prune() { # name, flags...
  local name=$1
  shift
  [ -f "$out/$name/config.json" ] && return
  "$bin" prune -m "$model" --calib "$calib" -o "$out/$name" --calib-tokens 16384 "$@" \
    2>&1 | grep -v '^calibrate ' | sed "s/^/[$name] /" >&2
}
distill() { # student dir name
  local name=$1
  [ -f "$out/$name+kd/model.safetensors" ] && return
  local t0=$SECONDS
  "$bin" train --init "$out/$name" --teacher "$out/dense" --kd-alpha 0.5 --kd-temperature 2 \
    --data_path "$out/train" --seq-len 128 --batch-size 4 --max-steps "$KD_STEPS" \
    --learning-rate 1e-4 --warmup 3 --eval-every 0 --save-every 0 --model_path "$out/$name+kd" \
    >/dev/null 2>&1
  echo "[$name+kd] $KD_STEPS steps x 512 tokens distilled in $((SECONDS - t0)) s" >&2
}

prune dense --drop-layers 0
for n in $DROP; do prune "depth-$n" --drop-layers "$n"; done
prune mlp-75 --ffn-keep 0.75
prune heads "--heads-keep" "$HEADS_KEEP"
prune wanda-50 --sparsity 0.5
prune wanda-2of4 --pattern 2:4
for m in $(for n in $DROP; do echo "depth-$n"; done) mlp-75 heads; do distill "$m"; done

echo "| model | layers | MLP | heads (KV) | params (M) | Q8_0 MiB | pp512 t/s | tg128 t/s | held-out ppl | llama.cpp greedy |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
rows="dense $(for n in $DROP; do echo "depth-$n depth-$n+kd"; done) mlp-75 mlp-75+kd heads heads+kd"
for m in $rows wanda-50 wanda-2of4; do
  dir="$out/$m"
  gguf="$out/$m.q8_0.gguf"
  [ -f "$gguf" ] || "$bin" export "$dir" --gguf "$gguf" --type q8_0 >/dev/null 2>&1
  # Speed and perplexity, kept in $out/$m.cells (delete it to measure again).
  if [ ! -s "$out/$m.cells" ]; then
    bench=$("$bin" bench -m "$gguf" -r "$REPS" --json 2>/dev/null)
    ppl=$("$bin" perplexity -m "$gguf" --file "$heldout" --chunks "$CHUNKS" --json 2>/dev/null |
      python3 -c 'import json,sys; print("%.3f" % json.load(sys.stdin)["ppl"])')
    python3 - "$dir/config.json" "$gguf" "$ppl" "$bench" >"$out/$m.cells" <<'PY'
import json, os, sys
cfg, b = json.load(open(sys.argv[1])), json.loads(sys.argv[4])
print(f"{cfg['num_hidden_layers']} | {cfg['intermediate_size']} | "
      f"{cfg['num_attention_heads']} ({cfg['num_key_value_heads']}) | {b['parameters'] / 1e6:.1f} | "
      f"{os.path.getsize(sys.argv[2]) / 2**20:.0f} | {b['pp_tokens_per_second']['mean']:.0f} | "
      f"{b['tg_tokens_per_second']['mean']:.1f} | {sys.argv[3]}")
PY
  fi
  # Greedy text against llama.cpp's: "same", or where it parts, the gap between our top two
  # log-probabilities there (a near-tie is a rounding matter, not a different model).
  ours=$("$bin" generate -m "$gguf" -p "$prompt" -n 24 --temperature 0 --json --top-logprobs 2 2>/dev/null)
  theirs=$("$lcpp/llama-simple" -m "$gguf" -n 24 "$prompt" 2>/dev/null)
  same=$(python3 - "$prompt" "$theirs" "$ours" <<'PY'
import json, sys
prompt, theirs, ours = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
theirs = theirs.removeprefix("<s>").lstrip()  # llama-simple prints a SentencePiece BOS
theirs = theirs[len(prompt):] if theirs.startswith(prompt) else theirs
# GPT-2's byte-level alphabet (bytes_to_unicode), to turn byte-level BPE pieces into bytes.
keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
alphabet = {chr(b): b for b in keep}
alphabet.update({chr(256 + n): b for n, b in enumerate(b for b in range(256) if b not in keep)})
def piece_bytes(p):
    if p.startswith("<0x") and p.endswith(">") and len(p) == 6:  # SentencePiece byte
        return bytes([int(p[3:5], 16)])
    if all(c in alphabet for c in p):
        return bytes(alphabet[c] for c in p)
    return p.replace("\u2581", " ").encode()  # SentencePiece
raw = b""
for i, s in enumerate(ours["steps"]):
    top = s["top_logprobs"]
    raw += piece_bytes(top[0]["piece"])
    # A multi-byte character cut by a token boundary: compare up to its last whole character.
    text = raw.decode("utf-8", errors="ignore")
    if not theirs.startswith(text):
        gap = top[0]["logprob"] - top[1]["logprob"]
        print(f"same for {i} tokens, then a near-tie (gap {gap:.3f})" if gap < 0.1
              else f"differs after {i} tokens (gap {gap:.3f})")
        break
else:
    print("same")
PY
)
  echo "| $m | $(cat "$out/$m.cells") | $same |"
done
