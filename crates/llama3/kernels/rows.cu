/* Row-wise ops of a decode step on the GPU, each one launch where candle takes two or three:
 *
 * add_rms_norm: the residual add and the RMSNorm after it. Per row r (a block each):
 *   s = x + y (rounded to the activation kind, as candle's add), h = s / sqrt(mean(s^2) + eps) * w
 *   (f32 inside, one rounding, as candle's fused rms_norm).
 * swiglu: h = silu(gate) * up, silu(a) = a / (1 + exp(-a)) (f32 inside, one rounding).
 *
 * Dims: R rows, D model dim, F MLP dim. x, y (R, D) and gate, up (R, F) have rows `*_rs`
 * elements apart (views of a stacked projection's output); s, h are contiguous; w (D).
 * Element kinds as decode_attention.cu (0 f32, 1 bf16, 2 f16), all of one kind `xk`.
 * Launch: add_rms_norm grid (R), swiglu grid (ceil(F / threads), R); NWARPS*32 threads. The C
 * subset of CUDA again: tests/cuda_emu runs this file on the CPU. */

#include "elem.cuh"

KAPI void add_rms_norm(const void *x, const void *y, long long x_rs, long long y_rs,
                       const void *w, void *s, void *h, int d, float eps, int xk) {
    __shared__ float red[NWARPS];
    const int r = blockIdx.x, tid = threadIdx.x, nt = blockDim.x;
    const long long o = (long long)r * d;
    float ss = 0.f;
    for (int i = tid; i < d; i += nt) {
        float v = round_to(ld(x, r * x_rs + i, xk) + ld(y, r * y_rs + i, xk), xk);
        st(s, o + i, xk, v);
        ss += v * v;
    }
    ss = warp_sum(ss);
    if ((tid & 31) == 0) red[tid >> 5] = ss;
    __syncthreads();
    float tot = 0.f;
    for (int i = 0; i < nt / 32; i++) tot += red[i];
    const float inv = 1.f / sqrtf(tot / (float)d + eps);
    for (int i = tid; i < d; i += nt) {
        float v = round_to(ld(x, r * x_rs + i, xk) + ld(y, r * y_rs + i, xk), xk);
        st(h, o + i, xk, v * inv * ld(w, i, xk));
    }
}

KAPI void swiglu(const void *gate, const void *up, long long g_rs, long long u_rs, void *h, int f,
                 int xk) {
    const int r = blockIdx.y, i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < f) {
        float a = ld(gate, r * g_rs + i, xk), u = ld(up, r * u_rs + i, xk);
        st(h, (long long)r * f + i, xk, a / (1.f + expf(-a)) * u);
    }
}
