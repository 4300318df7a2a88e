#!/usr/bin/env bash
# CPU speed of `llama3 bench` per GGUF weight type, next to llama.cpp's own `llama-bench` on the
# same files, with the same thread count, run one after the other (never in parallel):
#   ours      : llama3 bench -p 512 -n 128 (pp512 from an empty context; tg128 = 128 single-token
#               forwards after that 512-token prompt, i.e. at depth 512..639);
#   llama.cpp : llama-bench -p 512 -n 128 -d 0 (pp512; its tg128 at depth 0 is kept in the raw
#               JSON and the last column) and llama-bench -p 0 -n 128 -d 512 (tg128 at depth 512,
#               the number compared with ours).
# The models: a random-weight Llama (scripts/make_random_llama.py: dim 1024, ffn 2816, 8 layers,
# vocab 32000, F16; every matmul dim a multiple of 256, so K-quants apply everywhere) quantized by
# llama-quantize to each of $TYPES, and the default model (SmolLM2-135M-Instruct Q4_1,
# `llama3 pull`) requantized to each of $SMOL_TYPES (--allow-requantize; its dims, 576/1536, are
# not multiples of 256, so llama.cpp's K-quant fallbacks apply). Model files are cached in
# ~/.cache/llama3/bench-models/. llama.cpp's tools come from scripts/build-llamacpp.sh (first run
# builds them: ~10 minutes on two cores). Nothing of llama.cpp or any model enters the repository.
#
# Usage: scripts/bench_types.sh [EXTRA.gguf ...]     extra files are measured as they are
#   TYPES="Q4_0 Q8_0" scripts/bench_types.sh          a subset (F16 = the unquantized random model)
#   SMOL_TYPES="" scripts/bench_types.sh              skip the default model (Q4_1 = it, as pulled)
#   PERPLEXITY=1 scripts/bench_types.sh               also perplexity, both sides (see below)
# Environment: TYPES (Q4_0 Q5_0 Q5_1 Q4_K_M Q5_K_M Q6_K Q8_0 Q4_1 IQ4_XS), SMOL_TYPES (Q4_0 Q4_K_M),
#   THREADS (2), REPS (3), P (512), N (128), RESULTS (results dir, default
#   ~/.cache/llama3/bench-types/results-DATE), MODELS_DIR (~/.cache/llama3/bench-models),
#   OMP_POLICIES (ACTIVE PASSIVE, see below), LLAMA3_LLAMACPP (see build-llamacpp.sh), LLAMA3_BIN
#   (./target/release/llama3; a copy keeps a long run safe from rebuilds of target/).
# PERPLEXITY=1: `llama-perplexity -f $PPL_FILE -c 512 --chunks $PPL_CHUNKS` and
#   `llama3 perplexity -f $PPL_FILE -c 512 --chunks $PPL_CHUNKS` (both llama.cpp's protocol:
#   independent 512-token chunks, second half scored) on every file; PPL_FILE defaults to the
#   held-out split the README's perplexity figures use (../shared/data/sotu/heldout-last10.txt),
#   PPL_CHUNKS to 20 (0 = all 152; a minute or more per file and side on two cores). The random
#   model's perplexity is meaningless (about the vocab size); its time is not.
# Output: a markdown table on stdout (also $RESULTS/table.md), raw JSON per file and tool in
#   $RESULTS. A file our binary refuses is reported as such and the run goes on. The `ours
#   kernels` column is from `llama3 bench --json`: the weight matmuls that run through candle's
#   generic (slow) quantized matmul instead of our packed kernels are marked "slow".
# llama.cpp's CPU backend (built with OpenMP) waits at a barrier after every op. libgomp's active
# wait (spinning) is its best case on a quiet machine (measured here: tg 240 t/s against 90 with
# passive waiting), and stalls it when another process holds a core (scripts/bench.sh: 5 s per
# token instead of 14 ms). So llama-bench runs under each of OMP_POLICIES (ACTIVE PASSIVE) and
# the table compares with llama.cpp's better figure per measurement: the strongest reference.
set -euo pipefail
cd "$(dirname "$0")/.."

TYPES="${TYPES-Q4_0 Q5_0 Q5_1 Q4_K_M Q5_K_M Q6_K Q8_0 Q4_1 IQ4_XS}"
SMOL_TYPES="${SMOL_TYPES-Q4_0 Q4_K_M}"
THREADS="${THREADS:-2}"
REPS="${REPS:-3}"
P="${P:-512}"
N="${N:-128}"
PERPLEXITY="${PERPLEXITY:-0}"
PPL_FILE="${PPL_FILE:-$(cd .. && pwd)/shared/data/sotu/heldout-last10.txt}"
PPL_CHUNKS="${PPL_CHUNKS:-20}"
models_dir="${MODELS_DIR:-$HOME/.cache/llama3/bench-models}"
out="${RESULTS:-$HOME/.cache/llama3/bench-types/results-$(date +%Y%m%d-%H%M%S)}"
OMP_POLICIES="${OMP_POLICIES:-ACTIVE PASSIVE}"
mkdir -p "$models_dir" "$out"

# 1. Tools: llama.cpp's (built once, cached), ours, and a Python with numpy for gguf-py.
llamacpp_bin="$(scripts/build-llamacpp.sh)"
gguf_py="$(scripts/build-llamacpp.sh --gguf-py)"
bin="${LLAMA3_BIN:-./target/release/llama3}"
[ -x "$bin" ] || cargo build --release --bin llama3 >&2
venv="$(dirname "$(dirname "$llamacpp_bin")")/venv"  # the build-llamacpp.sh cache dir's venv
if ! "$venv/bin/python" -c "import numpy, yaml, tqdm" 2>/dev/null; then
  echo "installing numpy (and gguf-py's pyyaml, tqdm) into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q numpy pyyaml tqdm >&2
fi

# 2. Model files: the random F16 model, its quantizations, the default model's requantizations.
#    Each is made once; a list of "label|type|path" lines drives the measurements.
base="$models_dir/random-llama-d1024-l8-F16.gguf"
if [ ! -f "$base" ]; then
  echo "writing the random model $base" >&2
  PYTHONPATH="$gguf_py" "$venv/bin/python" scripts/make_random_llama.py "$base" >&2
fi
quantize() {  # quantize IN OUT TYPE [--allow-requantize]; returns non-zero if llama-quantize refuses
  local in="$1" outf="$2" type="$3" flag="${4:-}"
  [ -f "$outf" ] && return 0
  echo "llama-quantize $flag $(basename "$in") -> $type" >&2
  if "$llamacpp_bin/llama-quantize" $flag "$in" "$outf.tmp" "$type" "$THREADS" \
       >"$out/quantize-$(basename "$outf").log" 2>&1; then
    mv "$outf.tmp" "$outf"
  else
    rm -f "$outf.tmp"
    echo "  llama-quantize could not make $type (log: $out/quantize-$(basename "$outf").log)" >&2
    return 1
  fi
}
runs=()
for t in $TYPES; do
  f="$models_dir/random-llama-d1024-l8-$t.gguf"
  [ "$t" = F16 ] && f="$base"
  quantize "$base" "$f" "$t" && runs+=("random-1024x8|$t|$f")
done
smol="$($bin pull)"
for t in $SMOL_TYPES; do
  f="$models_dir/SmolLM2-135M-Instruct-requant-$t.gguf"
  [ "$t" = Q4_1 ] && f="$smol"
  quantize "$smol" "$f" "$t" --allow-requantize && runs+=("smollm2-135m|$t|$f")
done
for f in "$@"; do
  [ -f "$f" ] || { echo "error: no model file $f" >&2; exit 1; }
  runs+=("$(basename "$f" .gguf)|as is|$f")
done
printf '%s\n' "${runs[@]}" >"$out/runs.txt"

# 3. Measurements, one process at a time. Load average before each, for judging the noise.
echo "threads $THREADS, reps $REPS, llama.cpp OMP_WAIT_POLICY best of $OMP_POLICIES, $(nproc) cores" >"$out/env.txt"
"$bin" --version >>"$out/env.txt" 2>/dev/null || true
for i in "${!runs[@]}"; do
  IFS='|' read -r label type f <<<"${runs[$i]}"
  tag="$i.$label.${type// /_}"
  step="[$((i + 1))/${#runs[@]}] $label $type"
  echo "$step: load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/env.txt" >&2
  echo "$step: llama3 bench" >&2
  if ! "$bin" bench -m "$f" -p "$P" -n "$N" -t "$THREADS" -r "$REPS" --json \
       >"$out/$tag.llama3.json" 2>"$out/$tag.llama3.err"; then
    echo "  llama3 refused $f: $(tail -n1 "$out/$tag.llama3.err")" >&2
    rm -f "$out/$tag.llama3.json"
  fi
  for pol in $OMP_POLICIES; do
    echo "$step: llama-bench pp$P ($pol)" >&2
    OMP_WAIT_POLICY=$pol "$llamacpp_bin/llama-bench" -m "$f" -p "$P" -n "$N" -d 0 \
      -t "$THREADS" -r "$REPS" -o json \
      >"$out/$tag.llamacpp-$pol-d0.json" 2>"$out/$tag.llamacpp-$pol-d0.err" ||
      echo "  llama-bench failed: $(tail -n1 "$out/$tag.llamacpp-$pol-d0.err")" >&2
    echo "$step: llama-bench tg$N at depth $P ($pol)" >&2
    OMP_WAIT_POLICY=$pol "$llamacpp_bin/llama-bench" -m "$f" -p 0 -n "$N" -d "$P" \
      -t "$THREADS" -r "$REPS" -o json \
      >"$out/$tag.llamacpp-$pol-d$P.json" 2>"$out/$tag.llamacpp-$pol-d$P.err" ||
      echo "  llama-bench failed: $(tail -n1 "$out/$tag.llamacpp-$pol-d$P.err")" >&2
  done
  if [ "$PERPLEXITY" = 1 ]; then
    chunks=()
    [ "$PPL_CHUNKS" != 0 ] && chunks=(--chunks "$PPL_CHUNKS")
    echo "$step: llama3 perplexity" >&2
    t0=$(date +%s%N)
    if "$bin" perplexity -m "$f" -f "$PPL_FILE" -c 512 "${chunks[@]}" -t "$THREADS" --json \
         >"$out/$tag.llama3-ppl.json" 2>"$out/$tag.llama3-ppl.err"; then
      echo "{\"wall_ms\": $((($(date +%s%N) - t0) / 1000000))}" >"$out/$tag.llama3-ppl.wall.json"
    else
      rm -f "$out/$tag.llama3-ppl.json"
    fi
    echo "$step: llama-perplexity" >&2
    t0=$(date +%s%N)
    if "$llamacpp_bin/llama-perplexity" -m "$f" -f "$PPL_FILE" -c 512 "${chunks[@]}" \
         -t "$THREADS" >"$out/$tag.llamacpp-ppl.log" 2>&1; then
      echo "{\"wall_ms\": $((($(date +%s%N) - t0) / 1000000))}" >"$out/$tag.llamacpp-ppl.wall.json"
    fi
  fi
done

# 4. The table (also $out/table.md).
python3 scripts/bench_types_table.py "$out" "$P" "$N" | tee "$out/table.md"
echo "raw JSON and logs: $out" >&2
