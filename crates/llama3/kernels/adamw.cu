/* One AdamW step of one f32 parameter: p in place (a variable's storage), the moments m, v
 * into new buffers m2, v2 (candle tensors are not changed under their holders). PyTorch's
 * single-tensor semantics, as llama3-train's optim.rs (the same operations in the same order):
 *   m = (g - m) * (1 - beta1) + m;  v = v * beta2 + g * g * (1 - beta2)
 *   p = p * (1 - lr * wd) - m / (sqrt(v) / sqrt(1 - beta2^t) + eps) * lr / (1 - beta1^t)
 * One launch where candle's ops take ~17 per parameter. Grid-stride loop over n elements. */

#include "elem.cuh"

KAPI void adamw(float *p, const float *g, const float *m, const float *v, float *m2, float *v2,
                long long n, float decay, float nb1, float b2, float nb2, float eps, float bc2,
                float step) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (; i < n; i += stride) {
        float gi = g[i], mi = m[i], vi = v[i];
        mi = (gi - mi) * nb1 + mi;
        vi = vi * b2 + gi * gi * nb2;
        float denom = sqrtf(vi) / bc2 + eps;
        p[i] = p[i] * decay - mi / denom * step;
        m2[i] = mi;
        v2[i] = vi;
    }
}
