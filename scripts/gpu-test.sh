#!/usr/bin/env bash
# Runs the GPU suite on a machine with an NVIDIA GPU, given the binaries that
# scripts/build-cuda.sh made (they need no Rust toolchain there):
#
#   scripts/gpu-test.sh BIN_DIR SHARED_DIR MODEL.gguf [OUT_DIR]
#
# BIN_DIR holds `llama3` and `gpu-tests`; SHARED_DIR is the reference data (../shared, at least
# golden/ and the files the tests name); MODEL is the default SmolLM2-135M-Instruct Q4_1 GGUF.
# Then the benchmarks: the default model, and random weights of the SmolLM2-135M and
# Llama-3.2-1B shapes (decode at batch 1 and 16, prefill, training), as JSON in OUT_DIR.
set -uo pipefail
BIN=$(realpath "$1") SHARED=$(realpath "$2") MODEL=$(realpath "$3") OUT=${4:-gpu-out}
mkdir -p "$OUT"
# The CUDA runtime and cuBLAS of the machine's toolkit (the binaries link libcudart.so.13).
for d in /usr/local/cuda-13.0/targets/x86_64-linux/lib /usr/local/cuda/lib64; do
  [ -d "$d" ] && export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
ldd "$BIN/llama3" | grep -E "cuda|cublas|curand|not found" | tee -a "$OUT/gpu.txt"

export LLAMA3_SHARED=$SHARED LLAMA3_MODEL=$MODEL LLAMA3_BIN=$BIN/llama3 RUST_BACKTRACE=1
status=0
echo "== GPU tests"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  "$BIN/gpu-tests" --test-threads 1 --nocapture 2>&1 | tee "$OUT/gpu-tests.log" || status=1
fi

echo "== benchmarks"
bench() { # NAME ARGS...
  local name=$1
  shift
  echo "-- $name: llama3 bench $*"
  "$BIN/llama3" bench "$@" --json | tee "$OUT/bench-$name.json" || status=1
}
# BENCHES: which to run (default all). The *-ops runs turn our CUDA kernels off
# (LLAMA3_CUDA_KERNELS=0: candle's ops for attention, softmax, norms, SwiGLU and AdamW), side by side.
want() { [[ " ${BENCHES:-q4_1 q4_1-ops smollm2-b1 smollm2-b1-ops smollm2-b16 llama1b-b1 llama1b-b16} " == *" $1 "* ]]; }
want q4_1 && bench q4_1 -m "$MODEL" -p 512 -n 128 -r 3
want q4_1-ops && LLAMA3_CUDA_KERNELS=0 bench q4_1-ops -m "$MODEL" -p 512 -n 128 -r 3
want smollm2-b1 && bench smollm2-b1 --preset smollm2-135m -p 512 -n 128 -r 3 --train --train-batch 8
want smollm2-b1-ops && LLAMA3_CUDA_KERNELS=0 bench smollm2-b1-ops --preset smollm2-135m -p 512 -n 128 -r 3 --train --train-batch 8
want smollm2-b16 && bench smollm2-b16 --preset smollm2-135m -p 512 -n 128 -r 3 -b 16
want llama1b-b1 && bench llama1b-b1 --preset llama3.2-1b -p 512 -n 128 -r 3 --train --train-batch 4
want llama1b-b16 && bench llama1b-b16 --preset llama3.2-1b -p 512 -n 128 -r 3 -b 16
exit $status
