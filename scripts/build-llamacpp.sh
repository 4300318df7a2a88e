#!/usr/bin/env bash
# Builds llama.cpp's own command-line tools (llama-bench, llama-perplexity, llama-quantize, and the
# llama-speculative and llama-simple examples) for speed and quality comparisons (scripts/bench_types.sh,
# scripts/draft_bench.sh). The source is the llama.cpp that the
# llama-cpp-python sdist vendors, fetched with pip (the one package registry this machine
# reaches); nothing of llama.cpp enters this repository.
#
# Usage: scripts/build-llamacpp.sh          prints the bin dir (the only line on stdout)
#        scripts/build-llamacpp.sh --gguf-py  prints the vendored gguf-py dir (for PYTHONPATH)
# Environment: LLAMA3_LLAMACPP (cache dir, default ~/.cache/llama3/llamacpp-$VERSION),
#   LLAMA_CPP_PYTHON_VERSION (0.3.36), JOBS (nproc).
#   LLAMACPP_CMAKE_ARGS (extra cmake arguments, e.g. "-DGGML_NATIVE=OFF -DGGML_AVX2=ON").
# Idempotent: a second run with the same settings finds the binaries and only prints the
# path; changed settings rebuild. The first build takes 10-15 minutes on two cores. If cmake is
# missing it is pip-installed into a venv in the cache dir.
# Built with -DGGML_NATIVE=ON (this CPU's instruction set), Release, no curl, and without AMX:
# on this machine's Xeon (amx_int8 in /proc/cpuinfo, -march=native turns AMX on) every quantized
# model crashed in ggml_backend_amx_mul_mat on its first matmul (llama-bench, llama-perplexity:
# SIGSEGV; F16, which AMX does not take, ran; so did `llama-bench --repack 0`, which keeps weights
# out of the AMX buffer), the crash reported as ggml-org/llama.cpp#20824 (closed without a fix).
# -mno-amx-* takes AMX out of -march=native; AVX-512 (VNNI, BF16) stays.
set -euo pipefail

version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
cache="${LLAMA3_LLAMACPP:-$HOME/.cache/llama3/llamacpp-$version}"
jobs="${JOBS:-$(nproc)}"
src="$cache/src"           # the extracted sdist; llama.cpp is $src/vendor/llama.cpp
build="$cache/build"
bin="$build/bin"
targets=(llama-bench llama-perplexity llama-quantize llama-speculative llama-simple)

no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
cmake_args=(-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON "-DCMAKE_C_FLAGS=$no_amx"
            "-DCMAKE_CXX_FLAGS=$no_amx" -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF
            -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF
            ${LLAMACPP_CMAKE_ARGS:-})
stamp="$build/llama3-build-args"  # the arguments of the build in $build

have_all() {
  local t
  for t in "${targets[@]}"; do [ -x "$bin/$t" ] || return 1; done
  [ "$(cat "$stamp" 2>/dev/null)" = "${cmake_args[*]}" ]
}

if ! have_all; then
  mkdir -p "$cache"
  # 1. The sdist (source only: --no-binary), unpacked once.
  if [ ! -f "$src/vendor/llama.cpp/CMakeLists.txt" ]; then
    echo "downloading the llama-cpp-python==$version sdist into $cache/sdist" >&2
    python3 -m pip download -q --no-deps --no-binary llama-cpp-python \
      "llama-cpp-python==$version" -d "$cache/sdist" >&2
    tarball=""
    for f in "$cache/sdist"/llama_cpp_python-"$version".tar.gz \
             "$cache/sdist"/llama-cpp-python-"$version".tar.gz; do
      [ -f "$f" ] && tarball="$f"
    done
    [ -n "$tarball" ] || { echo "error: no sdist tarball in $cache/sdist" >&2; exit 1; }
    rm -rf "$src.tmp" && mkdir -p "$src.tmp"
    tar -xzf "$tarball" -C "$src.tmp" --strip-components=1
    rm -rf "$src" && mv "$src.tmp" "$src"
  fi
  # 2. cmake: the system's, or one pip-installed into a venv in the cache dir.
  cmake=cmake
  if ! command -v cmake >/dev/null 2>&1; then
    if [ ! -x "$cache/venv/bin/cmake" ]; then
      echo "no cmake on PATH: installing it into $cache/venv" >&2
      python3 -m venv "$cache/venv"
      "$cache/venv/bin/pip" install -q cmake >&2
    fi
    cmake="$cache/venv/bin/cmake"
  fi
  # 3. Configure and build only the three tools. Curl (model downloads) off; no tests, examples or
  #    server, so nothing else is compiled.
  echo "building ${targets[*]} in $build (-j$jobs, minutes)" >&2
  rm -f "$stamp"
  "$cmake" -S "$src/vendor/llama.cpp" -B "$build" "${cmake_args[@]}" >&2
  "$cmake" --build "$build" --config Release -j "$jobs" --target "${targets[@]}" >&2
  echo "${cmake_args[*]}" >"$stamp"
  have_all || { echo "error: build finished without ${targets[*]} in $bin" >&2; exit 1; }
fi

if [ "${1:-}" = "--gguf-py" ]; then
  echo "$src/vendor/llama.cpp/gguf-py"
else
  echo "$bin"
fi
