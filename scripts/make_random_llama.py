#!/usr/bin/env python3
"""Write a random-weight Llama GGUF (F16 matrices, F32 norms) for speed comparisons.

No download: the weights are drawn here (normal, std 0.02, norms 1, fixed seed) and the tokenizer
keys (tokenizer.ggml.*) are copied from llama.cpp's vocab-only SentencePiece GGUF in
../shared/data/llama-vocab-gguf/, so both llama.cpp and `llama3` load the file as a Llama 2-style
model. The default shape (dim 1024, ffn 2816, 8 layers, 16 heads, 4 KV heads, vocab 32000) has
every matmul dimension a multiple of 256, so llama-quantize applies the K-quants to every tensor
without falling back to other types. The output text is nonsense; only speed is meaningful.

Usage: make_random_llama.py OUT.gguf [--dim 1024 --ffn 2816 --layers 8 --heads 16 --kv-heads 4
                                      --ctx 2048 --seed 0 --vocab-gguf FILE]
Needs numpy and llama.cpp's gguf-py on PYTHONPATH (`scripts/build-llamacpp.sh --gguf-py` prints
its directory) or `pip install gguf`; scripts/bench_types.sh sets both up.
"""
import argparse
import os
import sys
from pathlib import Path

import numpy as np

try:
    import gguf
except ImportError:
    sys.exit("error: no gguf module: put llama.cpp's gguf-py on PYTHONPATH "
             "(scripts/build-llamacpp.sh --gguf-py) or pip install gguf")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VOCAB = REPO.parent / "shared/data/llama-vocab-gguf/ggml-vocab-llama-spm.gguf"


def copy_tokenizer(reader: "gguf.GGUFReader", writer: "gguf.GGUFWriter") -> int:
    """Copy every tokenizer.ggml.* key; return the number of tokens."""
    n_tokens = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.ggml."):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub_type = field.types[-1]
            value = field.contents()
            writer.add_key_value(key, value, vtype, sub_type=sub_type)
            if key == "tokenizer.ggml.tokens":
                n_tokens = len(value)
        else:
            writer.add_key_value(key, field.contents(), vtype)
    return n_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--ffn", type=int, default=2816)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--rms-eps", type=float, default=1e-5)
    ap.add_argument("--std", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab-gguf", type=Path, default=DEFAULT_VOCAB)
    args = ap.parse_args()

    D, F, L, H, Hkv = args.dim, args.ffn, args.layers, args.heads, args.kv_heads
    assert D % H == 0 and H % Hkv == 0, "dim must divide by heads, heads by kv heads"
    Dh = D // H

    tmp = args.out.with_name(args.out.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name(f"random-llama-d{D}-l{L}")
    writer.add_context_length(args.ctx)
    writer.add_embedding_length(D)
    writer.add_block_count(L)
    writer.add_feed_forward_length(F)
    writer.add_head_count(H)
    writer.add_head_count_kv(Hkv)
    writer.add_rope_dimension_count(Dh)
    writer.add_rope_freq_base(args.rope_theta)
    writer.add_layer_norm_rms_eps(args.rms_eps)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    V = copy_tokenizer(gguf.GGUFReader(str(args.vocab_gguf)), writer)
    assert V > 0, f"no tokenizer.ggml.tokens in {args.vocab_gguf}"
    writer.add_vocab_size(V)

    rng = np.random.default_rng(args.seed)

    def matrix(rows: int, cols: int) -> np.ndarray:
        # numpy (rows, cols) = GGUF ne (cols, rows): rows are output features, as in HF.
        w = rng.standard_normal((rows, cols), dtype=np.float32) * args.std
        return w.astype(np.float16)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    writer.add_tensor("token_embd.weight", matrix(V, D))
    for i in range(L):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", ones(D))
        writer.add_tensor(p + "attn_q.weight", matrix(H * Dh, D))
        writer.add_tensor(p + "attn_k.weight", matrix(Hkv * Dh, D))
        writer.add_tensor(p + "attn_v.weight", matrix(Hkv * Dh, D))
        writer.add_tensor(p + "attn_output.weight", matrix(D, H * Dh))
        writer.add_tensor(p + "ffn_norm.weight", ones(D))
        writer.add_tensor(p + "ffn_gate.weight", matrix(F, D))
        writer.add_tensor(p + "ffn_up.weight", matrix(F, D))
        writer.add_tensor(p + "ffn_down.weight", matrix(D, F))
    writer.add_tensor("output_norm.weight", ones(D))
    writer.add_tensor("output.weight", matrix(V, D))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, args.out)  # a killed run leaves no half-written OUT behind
    n_params = V * D * 2 + D + L * (2 * D + D * (H + 2 * Hkv) * Dh + H * Dh * D + 3 * D * F)
    print(f"wrote {args.out}: {n_params / 1e6:.1f}M parameters, {args.out.stat().st_size / 2**20:.0f} MiB",
          file=sys.stderr)


if __name__ == "__main__":
    main()
