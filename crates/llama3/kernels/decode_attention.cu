/* Fused decode attention on the GPU: one new token per sequence, in two launches per layer.
 *
 * `decode_attention` runs one block per (split of 64 keys, KV head j, sequence b): RoPE on the
 * G query heads that read KV head j, and (the block holding position `pos`) on the new key,
 * with the new K and V rows written into the cache; then the scores of its keys, their max and
 * sum of exp, and the exp-weighted sum of their values. `decode_attention_combine` merges the
 * splits (flash-decoding): y = sum_i exp(m_i - M) acc_i / sum_i exp(m_i - M) l_i. Splitting
 * the keys gives the GPU S/64 blocks per head to run at once, so a long context costs about as
 * much time as a short one. The pair stands in for the ~10 candle ops of that step (RoPE
 * twice, two cache writes, q.K^T, scale, softmax, p.V and their copies), each a launch and an
 * allocation, which are what a small model's decode step is made of.
 *
 * Numerics follow the CPU loop (decode.rs / sdpa.rs): HF half-rotation RoPE, f32 dot products,
 * softmax with the max subtracted, f32 accumulation; with an f16 cache under f32 activations
 * the query is rounded to f16 as llama.cpp does. The probabilities are not rounded to f16 (the
 * CPU rounds them after normalizing, which the splits do last): a difference of at most 2^-12
 * relative per probability.
 *
 * Written in the C subset of CUDA so that tests/cuda_emu runs the same source on the CPU
 * (threads as pthreads, __syncthreads and warp shuffles as barriers): the logic is tested
 * where no GPU is present. Layout (one dim legend: B sequences, H = Hkv*G query heads, Dh
 * head dim, C cache capacity, S = pos + 1 keys, P = ceil(S / 64) splits):
 *   q (B, H*Dh), k and v (B, Hkv*Dh): rows `q_rs`, `k_rs`, `v_rs` elements apart
 *   cos, sin (Dh/2) at position pos
 *   kc, vc (B, Hkv, C, Dh) contiguous
 *   part (B, Hkv, P, G*Dh) f32 and ml (B, Hkv, P, G, 2) f32: each split's sums, max and sum
 *   y (B, H*Dh) contiguous
 * Element kinds: 0 f32, 1 bf16, 2 f16 (`xk` activations, `ck` cache).
 * Launch: decode_attention grid (P, Hkv, B), decode_attention_combine grid (Hkv, B); blocks of
 * NWARPS*32 threads; needs Dh even, Dh <= 32*MAX_DPL, G <= MAX_G, G*Dh <= MAX_GD. */

#define MAX_DPL 8
#define MAX_G 8
#define MAX_GD 1024
#define SPLIT 64

#include "elem.cuh"

KAPI void decode_attention(const void *q, const void *k, const void *v, long long q_rs,
                           long long k_rs, long long v_rs, const void *cosv, const void *sinv,
                           void *kc, void *vc, float *part, float *ml, int hkv, int g, int dh,
                           int cap, int pos, float scale, int xk, int ck, int round_q) {
    __shared__ float qs[MAX_GD];         /* (G, Dh) roped queries */
    __shared__ float knew[32 * MAX_DPL]; /* the new key and value, as the cache keeps them */
    __shared__ float vnew[32 * MAX_DPL];
    __shared__ float sc[MAX_G * SPLIT];  /* (G, SPLIT) scores, then exp(score - split max) */
    const int sp = blockIdx.x, j = blockIdx.y, b = blockIdx.z, nsplit = gridDim.x;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, nt = blockDim.x;
    const int half = dh / 2, s_len = pos + 1;
    const int s0 = sp * SPLIT, n = s_len - s0 < SPLIT ? s_len - s0 : SPLIT;
    const long long kv0 = ((long long)b * hkv + j) * cap; /* row of position 0 in the cache */
    const int has_new = s0 + n == s_len; /* this split holds position pos (block-uniform) */

    /* 1. RoPE on the G query heads of KV head j (query head j*G + g reads KV head j). */
    for (int idx = tid; idx < g * half; idx += nt) {
        int gg = idx / half, i = idx % half;
        long long at = b * q_rs + (long long)(j * g + gg) * dh;
        float a = ld(q, at + i, xk), c = ld(q, at + i + half, xk);
        float co = ld(cosv, i, xk), si = ld(sinv, i, xk);
        float r1 = a * co - c * si, r2 = a * si + c * co;
        if (round_q) {
            r1 = round_to(r1, 2);
            r2 = round_to(r2, 2);
        }
        qs[gg * dh + i] = r1;
        qs[gg * dh + i + half] = r2;
    }
    /* The new key (roped) and value into the cache at pos, kept here as stored. */
    if (has_new) {
        for (int i = tid; i < half; i += nt) {
            long long at = b * k_rs + (long long)j * dh;
            float a = ld(k, at + i, xk), c = ld(k, at + i + half, xk);
            float co = ld(cosv, i, xk), si = ld(sinv, i, xk);
            float r1 = round_to(a * co - c * si, ck), r2 = round_to(a * si + c * co, ck);
            st(kc, (kv0 + pos) * dh + i, ck, r1);
            st(kc, (kv0 + pos) * dh + i + half, ck, r2);
            knew[i] = r1;
            knew[i + half] = r2;
        }
        for (int i = tid; i < dh; i += nt) {
            float x = round_to(ld(v, b * v_rs + (long long)j * dh + i, xk), ck);
            st(vc, (kv0 + pos) * dh + i, ck, x);
            vnew[i] = x;
        }
    }
    __syncthreads();

    /* 2. Scores of the split's keys: a thread per (head, key). */
    for (int idx = tid; idx < g * SPLIT; idx += nt) {
        int gg = idx / SPLIT, i = idx % SPLIT, s = s0 + i;
        float acc = -INFINITY;
        if (i < n) {
            const float *qg = qs + gg * dh;
            acc = 0.f;
            if (s == pos) {
                for (int d = 0; d < dh; d++) acc += qg[d] * knew[d];
            } else {
                long long row = (kv0 + s) * dh;
                for (int d = 0; d < dh; d++) acc += qg[d] * ld(kc, row + d, ck);
            }
            acc *= scale;
        }
        sc[gg * SPLIT + i] = acc;
    }
    __syncthreads();

    /* 3. Per head (warp w takes head w): the split's max, exp(score - max) and their sum. */
    if (w < g) {
        float m = -INFINITY;
        for (int i = lane; i < SPLIT; i += 32) m = fmaxf(m, sc[w * SPLIT + i]);
        m = warp_max(m);
        float l = 0.f;
        for (int i = lane; i < SPLIT; i += 32) {
            float e = i < n ? expf(sc[w * SPLIT + i] - m) : 0.f;
            sc[w * SPLIT + i] = e;
            l += e;
        }
        l = warp_sum(l);
        if (lane == 0) {
            long long at = ((((long long)b * hkv + j) * nsplit + sp) * g + w) * 2;
            ml[at] = m;
            ml[at + 1] = l;
        }
    }
    __syncthreads();

    /* 4. exp-weighted sums of the split's values: a thread per (head, dim). */
    const long long p0 = (((long long)b * hkv + j) * nsplit + sp) * g * dh;
    for (int o = tid; o < g * dh; o += nt) {
        int gg = o / dh, d = o % dh;
        const float *e = sc + gg * SPLIT;
        float acc = 0.f;
        for (int i = 0; i < n; i++) {
            int s = s0 + i;
            float x = s == pos ? vnew[d] : ld(vc, (kv0 + s) * dh + d, ck);
            acc += e[i] * x;
        }
        part[p0 + o] = acc;
    }
}

/* Merges the splits of `decode_attention` into y: a thread per (head, dim) of a block per
 * (KV head, sequence). */
KAPI void decode_attention_combine(const float *part, const float *ml, void *y, int hkv, int g,
                                   int dh, int nsplit, int xk) {
    const int j = blockIdx.x, b = blockIdx.y;
    const long long base = ((long long)b * hkv + j) * nsplit;
    for (int o = threadIdx.x; o < g * dh; o += blockDim.x) {
        int gg = o / dh;
        float mx = -INFINITY;
        for (int sp = 0; sp < nsplit; sp++) mx = fmaxf(mx, ml[((base + sp) * g + gg) * 2]);
        float l = 0.f, acc = 0.f;
        for (int sp = 0; sp < nsplit; sp++) {
            long long at = ((base + sp) * g + gg) * 2;
            float f = expf(ml[at] - mx);
            l += ml[at + 1] * f;
            acc += part[(base + sp) * g * dh + o] * f;
        }
        st(y, ((long long)b * hkv + j) * g * dh + o, xk, acc / l);
    }
}
