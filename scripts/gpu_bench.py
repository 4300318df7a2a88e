#!/usr/bin/env python3
"""GPU benchmark: `llama3 bench` and HF transformers side by side, in one run, as ratios.

    python3 scripts/gpu_bench.py path/to/llama3 [--json OUT.json]

Both run random weights of the SmolLM2-135M and Llama-3.2-1B shapes in bf16 on the first GPU:
decode of 128 tokens after a 512-token prompt at batch 1 and 16 (the logits of every step
leave the model), prefill of 512 tokens at batch 1, and training steps (f32 master weights,
bf16 matmuls, AdamW) on 8 x 512 (135M) or 4 x 512 (1B) tokens. Needs torch and transformers.
"""
import argparse
import json
import subprocess
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    # name: (D, F, layers, H, Hkv, rope_theta, vocab, tied, train batch)
    "smollm2-135m": (576, 1536, 30, 9, 3, 100000.0, 49152, True, 8),
    "llama3.2-1b": (2048, 8192, 16, 32, 8, 500000.0, 128256, True, 4),
}
P, N, REPS = 512, 128, 3


def hf_model(name, dtype):
    d, f, l, h, hkv, theta, v, tied, _ = SHAPES[name]
    cfg = LlamaConfig(hidden_size=d, intermediate_size=f, num_hidden_layers=l,
                      num_attention_heads=h, num_key_value_heads=hkv, rope_theta=theta,
                      vocab_size=v, tie_word_embeddings=tied, max_position_embeddings=8192)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(device="cuda", dtype=dtype).eval()


def sync_time(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


@torch.no_grad()
def hf_decode(model, batch):
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (batch, P), device="cuda")

    def run():
        out = model(prompt, use_cache=True)
        past = out.past_key_values
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(N):
            out = model(tok, past_key_values=past, use_cache=True)
            past = out.past_key_values
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            tok.cpu()  # a sampler reads every step's result

    def prefill():
        model(prompt[:1], use_cache=True).logits[:, -1].float().cpu()

    run()
    pre = [sync_time(prefill) for _ in range(REPS)]
    total = [sync_time(run) for _ in range(REPS)]
    # decode time = whole run minus its (batched) prefill
    batched_pre = [sync_time(lambda: model(prompt, use_cache=True)) for _ in range(REPS)]
    dec = [t - p for t, p in zip(total, batched_pre)]
    return P / (sum(pre) / REPS), batch * N / (sum(dec) / REPS)


def hf_train(name):
    model = hf_model(name, torch.float32).train()
    batch = SHAPES[name][8]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, model.config.vocab_size, (batch, P), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    times = [sync_time(step) for _ in range(REPS)]
    return batch * P / (sum(times) / REPS)


def ours(binary, name, *extra):
    cmd = [binary, "bench", "--preset", name, "-p", str(P), "-n", str(N), "-r", str(REPS),
           "--json", *extra]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--json")
    a = ap.parse_args()
    print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}", flush=True)
    rows, results = [], {}
    for name in SHAPES:
        batch = SHAPES[name][8]
        o1 = ours(a.binary, name, "--train", "--train-batch", str(batch))
        o16 = ours(a.binary, name, "-b", "16")
        model = hf_model(name, torch.bfloat16)
        hf_pp, hf_b1 = hf_decode(model, 1)
        _, hf_b16 = hf_decode(model, 16)
        del model
        torch.cuda.empty_cache()
        hf_tr = hf_train(name)
        torch.cuda.empty_cache()
        r = {
            "decode b1": (o1["tg_tokens_per_second"]["mean"], hf_b1),
            "decode b16": (o16["tg_tokens_per_second"]["mean"], hf_b16),
            "prefill 512": (o1["pp_tokens_per_second"]["mean"], hf_pp),
            f"train {batch}x{P}": (o1["train_tokens_per_second"]["mean"], hf_tr),
        }
        results[name] = {k: {"ours": v[0], "hf": v[1], "ratio": v[0] / v[1]} for k, v in r.items()}
        results[name]["ours_train_mfu"] = o1["train_mfu"]
        for k, (x, y) in r.items():
            rows.append(f"| {name} | {k} | {x:,.0f} | {y:,.0f} | {x / y:.2f} |")
        print(f"{name} done", flush=True)
    print("| shape | test | llama3 tok/s | HF transformers tok/s | ratio |")
    print("| --- | --- | ---: | ---: | ---: |")
    print("\n".join(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
