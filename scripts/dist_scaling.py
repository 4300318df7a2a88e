#!/usr/bin/env python3
"""Expected data-parallel scaling of `llama3 train`, worked out from the bytes each step moves
(issue 20, acceptance 2; the table in docs/distributed.md).

Per step every rank sends and receives 2 (N - 1) / N of the gradient bytes (reduce-scatter then
all-gather, f32), in 25 MB buckets, each collective 2 (N - 1) messages of latency ALPHA. The
gradient exchange is not overlapped with the backward (candle returns the gradients after the
whole backward), so a step takes compute + exchange, and the speedup over one rank at the same
per-rank batch is N x compute / (compute + exchange).

Usage: scripts/dist_scaling.py [--cpu-135m SECONDS] [--alpha-us 10]
  --cpu-135m: measured seconds of one 8 x 256-token step of the smollm2-135m preset on one CPU
  rank (this machine's figure goes in docs/distributed.md).
"""
import argparse

BUCKET = 25 * 1024 * 1024


def params(d, ff, layers, heads, kv, vocab, head_dim=64):
    attn = d * heads * head_dim * 2 + d * kv * head_dim * 2
    layer = attn + 3 * d * ff + 2 * d
    return layers * layer + vocab * d + d  # tied embedding / head


PRESETS = {
    "smollm2-135m": params(576, 1536, 30, 9, 3, 49152),
    "llama3.2-1b": params(2048, 8192, 16, 32, 8, 128256),
}


def exchange(grad_bytes, n, gbit, alpha):
    bw = gbit * 1e9 / 8
    buckets = -(-grad_bytes // BUCKET)
    return 2 * (n - 1) / n * grad_bytes / bw + 2 * (n - 1) * buckets * alpha


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu-135m", type=float, default=None)
    ap.add_argument("--alpha-us", type=float, default=10.0)
    a = ap.parse_args()
    alpha = a.alpha_us * 1e-6
    # Seconds of compute per step and rank: measured on one H100 (docs/gpu/gpu_bench.json,
    # ours and HF transformers), and on a CPU rank of this machine when given.
    profiles = {
        "H100, ours (11,886 / 4,511 tok/s)": {"smollm2-135m": 8 * 512 / 11886, "llama3.2-1b": 4 * 512 / 4511},
        "H100, HF transformers (35,579 / 19,453 tok/s)": {"smollm2-135m": 8 * 512 / 35579, "llama3.2-1b": 4 * 512 / 19453},
        # Gradient accumulation: 8 micro-batches per exchange.
        "H100, ours, --grad-accum 8": {"smollm2-135m": 8 * 8 * 512 / 11886, "llama3.2-1b": 8 * 4 * 512 / 4511},
    }
    if a.cpu_135m:
        ratio = PRESETS["llama3.2-1b"] / PRESETS["smollm2-135m"]
        profiles[f"CPU rank as this machine (2 cores), 8 x 256 tokens"] = {
            "smollm2-135m": a.cpu_135m,
            "llama3.2-1b": a.cpu_135m * ratio,
        }
    print(f"latency per message {a.alpha_us:g} us, 25 MB buckets, f32 gradients\n")
    for name, n_params in PRESETS.items():
        g = n_params * 4
        print(f"### {name}: {n_params / 1e6:.1f} M parameters, {g / 1e6:.0f} MB of gradients per step\n")
        print("| compute per rank | step compute s | ranks | 25 Gbit/s | 100 Gbit/s | 400 Gbit/s |")
        print("| --- | --- | --- | --- | --- | --- |")
        for prof, t in profiles.items():
            tc = t[name]
            for n in (8, 64):
                cells = []
                for gbit in (25, 100, 400):
                    te = exchange(g, n, gbit, alpha)
                    eff = tc / (tc + te)
                    cells.append(f"{te:.3f} s: {eff * 100:.0f}% ({n * eff:.1f}x)")
                print(f"| {prof} | {tc:.3f} | {n} | " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    main()
