"""PyTorch reference for scripts/train_bench.sh: the same Llama shape, data shape and AdamW step
as `llama3 train --init PRESET`, in f32 on the CPU, timed per optimizer step.

A compact Llama in the style of llama2.c's model.py (RMSNorm, RoPE, GQA, SwiGLU, tied head,
F.scaled_dot_product_attention with is_causal). Prints one JSON line."""
import argparse, json, math, resource, time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {  # (D, F, layers, H, Hkv) as crates/llama3-train/src/presets.rs
    "tiny": (64, 192, 2, 4, 2),
    "15m": (288, 768, 6, 6, 6),
    "smollm2-135m": (576, 1536, 30, 9, 3),
}


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x, cos, sin):  # x: (B, H, T, hd), HF's rotate_half layout
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Block(nn.Module):
    def __init__(self, d, f, h, hkv):
        super().__init__()
        self.h, self.hkv, self.hd = h, hkv, d // h
        self.input_layernorm = RMSNorm(d)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, hkv * self.hd, bias=False)
        self.v_proj = nn.Linear(d, hkv * self.hd, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.post_attention_layernorm = RMSNorm(d)
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        y = self.input_layernorm(x)
        q = self.q_proj(y).view(b, t, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(y).view(b, t, self.hkv, self.hd).transpose(1, 2)
        v = self.v_proj(y).view(b, t, self.hkv, self.hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        rep = self.h // self.hkv
        if rep > 1:
            k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o_proj(a.transpose(1, 2).reshape(b, t, d))
        y = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(y)) * self.up_proj(y))


class Llama(nn.Module):
    def __init__(self, vocab, d, f, layers, h, hkv, seq, theta=10000.0):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Block(d, f, h, hkv) for _ in range(layers))
        self.norm = RMSNorm(d)
        hd = d // h
        inv = 1.0 / theta ** (torch.arange(0, hd, 2).float() / hd)
        ang = torch.outer(torch.arange(seq).float(), inv)
        ang = torch.cat((ang, ang), dim=-1)
        self.register_buffer("cos", ang.cos(), persistent=False)
        self.register_buffer("sin", ang.sin(), persistent=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids, labels):
        x = self.embed_tokens(ids)
        t = ids.shape[1]
        for layer in self.layers:
            x = layer(x, self.cos[:t], self.sin[:t])
        logits = F.linear(self.norm(x), self.embed_tokens.weight)  # tied head
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.reshape(-1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="15m")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--raw", action="store_true", help="also print every step's tokens/s")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    d, f, layers, h, hkv = PRESETS[a.preset]
    model = Llama(a.vocab, d, f, layers, h, hkv, a.seq_len)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)  # as llama3 train's defaults
    g = torch.Generator().manual_seed(0)
    times = []
    for step in range(a.warmup_steps + a.steps):
        ids = torch.randint(0, a.vocab, (a.batch_size, a.seq_len + 1), generator=g)
        t0 = time.perf_counter()
        loss = model(ids[:, :-1], ids[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        if step >= a.warmup_steps:
            times.append(dt)
    tok = a.batch_size * a.seq_len
    rates = [tok / t for t in times]
    mean = sum(rates) / len(rates)
    sd = math.sqrt(sum((r - mean) ** 2 for r in rates) / max(1, len(rates) - 1))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"engine": f"torch {torch.__version__}", "tokens_per_s": mean, "sd": sd,
           "steps": len(rates), "peak_rss_mib": rss, "loss": loss.item()}
    if a.raw:
        out["rates"] = rates
    print(json.dumps(out))


if __name__ == "__main__":
    main()
