/* What our kernels share: the CUDA definitions they use (on the CPU, tests/cuda_emu/emu.h
 * defines them instead), loads and stores by element kind (0 f32, 1 bf16, 2 f16), rounding,
 * and warp reductions. */
#ifndef LLAMA3_ELEM_CUH
#define LLAMA3_ELEM_CUH

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

/* Warps per block of every kernel: blocks of NWARPS*32 threads (THREADS in src/cuda/mod.rs). */
#define NWARPS 8

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

DEV float warp_max(float x) {
    UNROLL for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, shfl_xor(x, o));
    return x;
}

/* Every lane gets the same sum (a xor butterfly adds the same pairs on both sides). */
DEV float warp_sum(float x) {
    UNROLL for (int o = 16; o > 0; o >>= 1) x += shfl_xor(x, o);
    return x;
}

#endif
