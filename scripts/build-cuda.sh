#!/usr/bin/env bash
# Builds the CUDA flavour of `llama3` (and the GPU test binary) on a machine with no CUDA
# toolkit and no GPU: the CUDA 13.0 compiler and libraries come from Python wheels, and a stub
# libcuda (link time only; the driver's real one is loaded at run time) satisfies the linker.
#
#   scripts/build-cuda.sh            # -> target-cuda/release/llama3, target-cuda/gpu-tests
#   LLAMA3_CUDA_FEATURES=nccl scripts/build-cuda.sh   # the same with data parallelism over
#                                    # GPUs (`llama3 train --num-gpus N`), NCCL from its wheel
#
# The `nccl` build links libnccl.so.2 (as every CUDA build links libcudart.so.13 and
# libcublas.so.13): at run time the loader must find it, e.g. LD_LIBRARY_PATH=<the wheel's
# nvidia/nccl/lib> (this machine: ~/.cache/llama3/cuda/nccl/nvidia/nccl/lib; a GPU machine:
# `pip install nvidia-nccl-cu13==2.30.7`; scripts/gpu-test-dist.sh looks for it). The default
# build leaves NCCL out, so the GPU pack (scripts/gpu-pack.sh) needs no 250 MB library.
#
# Environment: LLAMA3_CUDA_PREFIX (toolkit cache, default ~/.cache/llama3/cuda),
# CUDA_COMPUTE_CAP (default 90 = H100/H200), CARGO_TARGET_DIR (default target-cuda),
# LLAMA3_CUDA_FEATURES (default cuda; nccl adds NCCL data parallelism).
# Use CUDA 13.0.x: PTX from a newer nvcc does not load on a 13.0 driver.
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=${LLAMA3_CUDA_PREFIX:-$HOME/.cache/llama3/cuda}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target-cuda}
WHEELS=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88)
# NCCL 2.30: the API cudarc 0.19's `nccl` feature binds. Its wheel says +cuda13.3; NCCL links
# its CUDA runtime statically and carries SASS for the GPUs, so a 13.0 driver should load it
# (CUDA's minor-version compatibility).
NCCL_VERSION=2.30.7
FEATURES=${LLAMA3_CUDA_FEATURES:-cuda}

# 1. The toolkit, from wheels.
CU=$PREFIX/pkgs/nvidia/cu13
if [ ! -x "$CU/bin/nvcc" ]; then
  echo "== installing the CUDA 13.0 toolkit wheels into $PREFIX/pkgs"
  python3 -m pip install -q --disable-pip-version-check --target "$PREFIX/pkgs" "${WHEELS[@]}"
fi
# NCCL in a folder of its own: `pip install --target` skips (or, with --upgrade, replaces) a
# top-level folder that is already there, and the toolkit's wheels hold nvidia/ already.
NCCL=$PREFIX/nccl/nvidia/nccl
if [[ $FEATURES == *nccl* ]] && [ ! -d "$PREFIX/nccl/nvidia_nccl_cu13-$NCCL_VERSION.dist-info" ]; then
  echo "== installing the NCCL $NCCL_VERSION wheel into $PREFIX/nccl"
  rm -rf "$PREFIX/nccl"
  python3 -m pip install -q --disable-pip-version-check --no-deps --target "$PREFIX/nccl" \
    "nvidia-nccl-cu13==$NCCL_VERSION"
fi

# 2. A CUDA_HOME-shaped tree over them, with the unversioned names the linker looks for.
HOME_DIR=$PREFIX/home
mkdir -p "$HOME_DIR/lib64"
for d in bin include nvvm; do ln -sfn "$CU/$d" "$HOME_DIR/$d"; done
for so in "$CU"/lib/*.so.*; do
  base=$(basename "$so")
  ln -sfn "$so" "$HOME_DIR/lib64/$base"
  ln -sfn "$so" "$HOME_DIR/lib64/${base%%.so.*}.so"
done
# NCCL: libnccl.so for the linker (cudarc links -lnccl), its headers under $CUDA_HOME/nccl.
if [[ $FEATURES == *nccl* ]]; then
  ln -sfn "$NCCL/lib/libnccl.so.2" "$HOME_DIR/lib64/libnccl.so.2"
  ln -sfn "$NCCL/lib/libnccl.so.2" "$HOME_DIR/lib64/libnccl.so"
  ln -sfn "$NCCL" "$HOME_DIR/nccl"
fi

# 3. A stub libcuda.so.1 that defines every driver entry point cudarc declares.
if [ ! -e "$HOME_DIR/lib64/libcuda.so" ]; then
  echo "== building the link-time libcuda stub"
  CUDARC=$(cargo metadata --format-version 1 --features cuda 2>/dev/null |
    python3 -c 'import json,sys,os; m=json.load(sys.stdin); print([os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"]=="cudarc"][0])')
  grep -ho 'fn cu[A-Za-z0-9_]*(' "$CUDARC/src/driver/sys/mod.rs" | sed 's/fn \(.*\)(/\1/' | sort -u |
    awk '{print "void " $1 "(void) {}"}' >"$HOME_DIR/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$HOME_DIR/lib64/libcuda.so.1" "$HOME_DIR/libcuda_stub.c"
  ln -sfn libcuda.so.1 "$HOME_DIR/lib64/libcuda.so"
fi

export CUDA_HOME=$HOME_DIR CUDA_PATH=$HOME_DIR CUDA_ROOT=$HOME_DIR
export PATH=$HOME_DIR/bin:$PATH
export LIBRARY_PATH=$HOME_DIR/lib64${LIBRARY_PATH:+:$LIBRARY_PATH}
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-$(nproc)}
nvcc --version | tail -2

# 4. The binary and the GPU test binary, with the same features (`nccl` implies `cuda`), so
# they share one build of the dependencies.
echo "== cargo build --release --features $FEATURES (candle's kernels take ~20 min on 2 cores)"
cargo build --release --features "$FEATURES" -p llama3-cli
cargo test --release --features "$FEATURES" -p llama3-cli --test gpu --no-run 2>&1 | tee "$CARGO_TARGET_DIR/gpu-tests.log"
test_bin=$(grep -o 'target-cuda/release/deps/gpu-[0-9a-f]*' "$CARGO_TARGET_DIR/gpu-tests.log" | tail -1 || true)
if [ -z "$test_bin" ]; then
  test_bin=$(ls -t "$CARGO_TARGET_DIR"/release/deps/gpu-* | grep -v '\.d$' | head -1)
fi
cp "$test_bin" "$CARGO_TARGET_DIR/gpu-tests"
echo "== built $CARGO_TARGET_DIR/release/llama3 and $CARGO_TARGET_DIR/gpu-tests (features: $FEATURES)"
if [[ $FEATURES == *nccl* ]]; then
  echo "   at run time they need libnccl.so.2 on the loader's path (here: $NCCL/lib)"
fi
