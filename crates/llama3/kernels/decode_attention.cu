/* Fused decode attention on the GPU: one new token per sequence, in one launch per layer.
 *
 * For each sequence b and KV head j (one block each): RoPE on the G query heads that read KV
 * head j and on the new key, the new K and V rows written into the cache at `pos`, then causal
 * softmax(q.K^T * scale) . V over the pos + 1 cached positions. It replaces the ~10 candle ops
 * of that step (RoPE twice, two cache writes, q.K^T, scale, softmax, p.V and their copies),
 * each a launch and an allocation, which is what a small model's decode step is made of.
 *
 * Numerics follow the CPU loop (decode.rs / sdpa.rs): HF half-rotation RoPE, f32 dot products
 * and softmax (max subtracted, probabilities normalized), f32 accumulation; with an f16 cache
 * under f32 activations the query and the probabilities are rounded to f16, as llama.cpp does.
 * Two passes over the keys (max and sum, then probabilities and values) keep the memory per
 * block independent of the context length.
 *
 * Written in the C subset of CUDA so that tests/cuda_emu runs the same source on the CPU
 * (threads as pthreads, __syncthreads and warp shuffles as barriers): the logic is tested
 * where no GPU is present. Layout (one dim legend: B sequences, H = Hkv*G query heads, Dh
 * head dim, C cache capacity):
 *   q (B, H*Dh), k and v (B, Hkv*Dh): rows `q_rs`, `k_rs`, `v_rs` elements apart
 *   cos, sin (Dh/2) at position pos
 *   kc, vc (B, Hkv, C, Dh) contiguous
 *   y (B, H*Dh) contiguous
 * Element kinds: 0 f32, 1 bf16, 2 f16 (`xk` activations, `ck` cache).
 * Launch: grid (Hkv, B), block NWARPS*32 threads; needs Dh even, Dh <= 32*MAX_DPL,
 * G <= MAX_G, G*Dh <= MAX_GD. A warp's lanes hold elements lane, lane + 32, ... of a head. */

#ifdef __CUDACC__
#include <cuda_fp16.h>
#define KAPI extern "C" __global__
#define DEV static __device__ __forceinline__
#define UNROLL _Pragma("unroll")
#define F32_BITS(f) __float_as_uint(f)
#define BITS_F32(u) __uint_as_float(u)
DEV float f16_to_f32(unsigned short h) { return __half2float(__ushort_as_half(h)); }
DEV unsigned short f32_to_f16(float f) { return __half_as_ushort(__float2half_rn(f)); }
DEV float shfl_xor(float x, int o) { return __shfl_xor_sync(0xffffffffu, x, o); }
#endif
/* Otherwise the includer (tests/cuda_emu/emu.h) defines all of the above. */

#define NWARPS 8
#define MAX_DPL 8
#define MAX_G 8
#define MAX_GD 1024

DEV float bf16_to_f32(unsigned short h) { return BITS_F32(((unsigned int)h) << 16); }

/* Round to nearest even; NaN stays a (quiet) NaN. */
DEV unsigned short f32_to_bf16(float f) {
    unsigned int u = F32_BITS(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

DEV float ld(const void *p, long long i, int kind) {
    if (kind == 0) return ((const float *)p)[i];
    if (kind == 1) return bf16_to_f32(((const unsigned short *)p)[i]);
    return f16_to_f32(((const unsigned short *)p)[i]);
}

DEV void st(void *p, long long i, int kind, float x) {
    if (kind == 0) ((float *)p)[i] = x;
    else if (kind == 1) ((unsigned short *)p)[i] = f32_to_bf16(x);
    else ((unsigned short *)p)[i] = f32_to_f16(x);
}

/* x as the given kind would store it. */
DEV float round_to(float x, int kind) {
    if (kind == 1) return bf16_to_f32(f32_to_bf16(x));
    if (kind == 2) return f16_to_f32(f32_to_f16(x));
    return x;
}

/* Every lane gets the same sum (a xor butterfly adds the same pairs on both sides). */
DEV float warp_sum(float x) {
    UNROLL for (int o = 16; o > 0; o >>= 1) x += shfl_xor(x, o);
    return x;
}

/* The lane's elements of one cached row (lane, lane + 32, ... below Dh; zeros past it); the
 * new row from `fresh`. */
DEV void load_row(float *r, const void *c, const float *fresh, long long row, int is_new,
                  int dpl, int dh, int lane, int ck) {
    UNROLL for (int dd = 0; dd < MAX_DPL; dd++) {
        if (dd < dpl) {
            int d = lane + 32 * dd;
            r[dd] = d >= dh ? 0.f : is_new ? fresh[d] : ld(c, row * dh + d, ck);
        }
    }
}

/* q_g . k_s over the whole head (a warp's lanes hold Dh/32 elements each). */
DEV float dot_row(const float *q, const float *k, int dpl, int dh, int lane) {
    float part = 0.f;
    UNROLL for (int dd = 0; dd < MAX_DPL; dd++) {
        if (dd < dpl && lane + 32 * dd < dh) part += q[lane + 32 * dd] * k[dd];
    }
    return warp_sum(part);
}

KAPI void decode_attention(const void *q, const void *k, const void *v, long long q_rs,
                           long long k_rs, long long v_rs, const void *cosv, const void *sinv,
                           void *kc, void *vc, void *y, int hkv, int g, int dh, int cap, int pos,
                           float scale, int xk, int ck, int round_q) {
    __shared__ float qs[MAX_GD];            /* (G, Dh) roped queries */
    __shared__ float knew[32 * MAX_DPL];    /* the new key and value, as the cache keeps them */
    __shared__ float vnew[32 * MAX_DPL];
    __shared__ float wm[NWARPS * MAX_G];    /* per warp and head: running max and sum */
    __shared__ float wl[NWARPS * MAX_G];
    __shared__ float wacc[NWARPS * MAX_GD]; /* per warp: (G, Dh) partial outputs */
    const int j = blockIdx.x, b = blockIdx.y;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, nt = blockDim.x;
    const int half = dh / 2, dpl = (dh + 31) / 32, s_len = pos + 1;
    const long long kv0 = ((long long)b * hkv + j) * cap; /* row of position 0 in the cache */

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
    /* The new key (roped) and value into the cache at pos, and kept here as stored. */
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
    __syncthreads();

    /* 2. Per warp, over its keys (w, w + NWARPS, ...): running max and sum of exp. */
    float m[MAX_G], l[MAX_G], kr[MAX_DPL], vr[MAX_DPL];
    UNROLL for (int gg = 0; gg < MAX_G; gg++) {
        m[gg] = -INFINITY;
        l[gg] = 0.f;
    }
    for (int s = w; s < s_len; s += NWARPS) { /* warp-uniform */
        load_row(kr, kc, knew, kv0 + s, s == pos, dpl, dh, lane, ck);
        UNROLL for (int gg = 0; gg < MAX_G; gg++) {
            if (gg < g) {
                float sc = dot_row(qs + gg * dh, kr, dpl, dh, lane) * scale;
                if (sc > m[gg]) {
                    l[gg] = l[gg] * expf(m[gg] - sc) + 1.f;
                    m[gg] = sc;
                } else {
                    l[gg] += expf(sc - m[gg]);
                }
            }
        }
    }
    if (lane == 0) {
        UNROLL for (int gg = 0; gg < MAX_G; gg++) {
            wm[w * MAX_G + gg] = m[gg];
            wl[w * MAX_G + gg] = l[gg];
        }
    }
    __syncthreads();
    /* Every thread merges the warps' maxima and sums (the same order everywhere). */
    UNROLL for (int gg = 0; gg < MAX_G; gg++) {
        if (gg < g) {
            float mx = -INFINITY, sum = 0.f;
            for (int ww = 0; ww < NWARPS; ww++) mx = fmaxf(mx, wm[ww * MAX_G + gg]);
            for (int ww = 0; ww < NWARPS; ww++) {
                float lw = wl[ww * MAX_G + gg];
                if (lw > 0.f) sum += lw * expf(wm[ww * MAX_G + gg] - mx);
            }
            m[gg] = mx;
            l[gg] = sum;
        }
    }

    /* 3. Probabilities (rounded to f16 with round_q) times values, per warp then summed. */
    float acc[MAX_G][MAX_DPL];
    UNROLL for (int gg = 0; gg < MAX_G; gg++) {
        UNROLL for (int dd = 0; dd < MAX_DPL; dd++) acc[gg][dd] = 0.f;
    }
    for (int s = w; s < s_len; s += NWARPS) {
        load_row(kr, kc, knew, kv0 + s, s == pos, dpl, dh, lane, ck);
        load_row(vr, vc, vnew, kv0 + s, s == pos, dpl, dh, lane, ck);
        UNROLL for (int gg = 0; gg < MAX_G; gg++) {
            if (gg < g) {
                float sc = dot_row(qs + gg * dh, kr, dpl, dh, lane) * scale;
                float p = expf(sc - m[gg]) / l[gg];
                if (round_q) p = round_to(p, 2);
                UNROLL for (int dd = 0; dd < MAX_DPL; dd++) {
                    if (dd < dpl) acc[gg][dd] += p * vr[dd];
                }
            }
        }
    }
    UNROLL for (int gg = 0; gg < MAX_G; gg++) {
        UNROLL for (int dd = 0; dd < MAX_DPL; dd++) {
            int d = lane + 32 * dd;
            if (gg < g && dd < dpl && d < dh) wacc[w * MAX_GD + gg * dh + d] = acc[gg][dd];
        }
    }
    __syncthreads();
    const long long y0 = (long long)b * hkv * g * dh + (long long)j * g * dh;
    for (int idx = tid; idx < g * dh; idx += nt) {
        float sum = 0.f;
        for (int ww = 0; ww < NWARPS; ww++) sum += wacc[ww * MAX_GD + idx];
        st(y, y0 + idx, xk, sum);
    }
}
