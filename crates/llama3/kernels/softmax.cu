/* Causal softmax of attention scores, forward and backward, one block per row: the scale, the
 * causal mask and the softmax in one launch where candle's differentiable ops take seven
 * passes over the (rows, S) scores (scale, the broadcast mask add, max, subtract, exp, sum,
 * divide) and about as many again backward.
 *
 * Rows are (B, Hkv, G, T) flattened: row r is query position i = r % T of T new positions
 * after S - T cached ones, and sees keys 0..=S-T+i (the mask `causal_mask(T, S - T)` adds).
 *   forward:  y_j = exp(scale x_j - m) / sum_k exp(scale x_k - m) for visible j, else 0
 *             (m the row's max; f32 inside, one rounding to the element kind)
 *   backward: dx_j = scale * y_j * (dy_j - sum_k dy_k y_k)
 * x, y, dy, dx (rows, S) contiguous, all of element kind `xk` (elem.cuh). Launch: grid (rows),
 * NWARPS*32 threads. C subset of CUDA: tests/cuda_emu runs it on the CPU. */

#include "elem.cuh"

/* The block's max (op 0) or sum (op 1) of x; every thread gets it. `red` holds NWARPS floats;
 * a barrier ends the call, so the next reduction may reuse its own array. */
DEV float block_reduce(float x, int op, float *red) {
    x = op ? warp_sum(x) : warp_max(x);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = x;
    __syncthreads();
    float r = red[0];
    for (unsigned w = 1; w < blockDim.x / 32; w++) r = op ? r + red[w] : fmaxf(r, red[w]);
    return r;
}

KAPI void causal_softmax(const void *x, void *y, int t, int s, float scale, int xk) {
    __shared__ float red_m[NWARPS];
    __shared__ float red_l[NWARPS];
    const long long r = blockIdx.x, o = r * s;
    const int tid = threadIdx.x, nt = blockDim.x, n = s - t + (int)(r % t) + 1;
    float m = -INFINITY;
    for (int j = tid; j < n; j += nt) m = fmaxf(m, ld(x, o + j, xk) * scale);
    m = block_reduce(m, 0, red_m);
    float l = 0.f;
    for (int j = tid; j < n; j += nt) l += expf(ld(x, o + j, xk) * scale - m);
    l = block_reduce(l, 1, red_l);
    for (int j = tid; j < s; j += nt)
        st(y, o + j, xk, j < n ? expf(ld(x, o + j, xk) * scale - m) / l : 0.f);
}

KAPI void causal_softmax_bwd(const void *y, const void *dy, void *dx, int t, int s, float scale,
                             int xk) {
    __shared__ float red[NWARPS];
    const long long r = blockIdx.x, o = r * s;
    const int tid = threadIdx.x, nt = blockDim.x, n = s - t + (int)(r % t) + 1;
    float dot = 0.f;
    for (int j = tid; j < n; j += nt) dot += ld(dy, o + j, xk) * ld(y, o + j, xk);
    dot = block_reduce(dot, 1, red);
    for (int j = tid; j < s; j += nt) {
        float d = j < n ? scale * ld(y, o + j, xk) * (ld(dy, o + j, xk) - dot) : 0.f;
        st(dx, o + j, xk, d);
    }
}
