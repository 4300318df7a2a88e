/* Runs CUDA kernels written in the C subset of CUDA on the CPU, to test their logic where no
 * GPU is present (tests/cuda_attention.rs, tests/cuda_ops.rs). A block's threads are pthreads that run at once;
 * blocks run one after another, so `__shared__` (here `static`) is the running block's.
 * __syncthreads is a barrier of the block, a warp shuffle a barrier of the warp with an
 * exchange slot per thread: kernels must call them where CUDA requires (the whole block,
 * resp. the whole warp). f16 conversions are IEEE's (round to nearest even), as the GPU's
 * cvt instructions. Blocks are one-dimensional. */
#ifndef LLAMA3_CUDA_EMU_H
#define LLAMA3_CUDA_EMU_H

#define _GNU_SOURCE /* pthread barriers */

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    unsigned x, y, z;
} dim3;

static _Thread_local dim3 threadIdx;
static dim3 blockIdx, blockDim, gridDim;

#define KAPI
#define DEV static inline
#define __shared__ static
#define UNROLL

static inline unsigned int emu_f32_bits(float f) {
    unsigned int u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float emu_bits_f32(unsigned int u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
#define F32_BITS(f) emu_f32_bits(f)
#define BITS_F32(u) emu_bits_f32(u)

static inline float f16_to_f32(unsigned short h) {
    unsigned int sign = (unsigned int)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) return emu_bits_f32(sign | 0x7f800000u | (m << 13)); /* inf, NaN */
    if (e == 0) {                                                          /* zero, subnormal */
        float f = (float)m * 0x1p-24f;
        return sign ? -f : f;
    }
    return emu_bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

static inline unsigned short f32_to_f16(float f) {
    unsigned int u = emu_f32_bits(f), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (unsigned short)(sign | 0x7e00u | ((a >> 13) & 0x3ffu)); /* NaN */
    if (a >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u); /* rounds to inf */
    if (a < 0x38800000u) { /* below the smallest normal: a multiple of 2^-24, ties to even */
        float x = emu_bits_f32(a) * 0x1p24f;
        return (unsigned short)(sign | (unsigned int)nearbyintf(x));
    }
    unsigned int e = (a >> 23) - 112u, m = a & 0x7fffffu;
    unsigned int h = (e << 10) | (m >> 13), rest = m & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h += 1u;
    return (unsigned short)(sign | h);
}

static pthread_barrier_t emu_block_barrier;
static pthread_barrier_t emu_warp_barrier[32];
static float emu_xch[1024];

static void __syncthreads(void) { pthread_barrier_wait(&emu_block_barrier); }

static float shfl_xor(float x, int o) {
    int t = (int)threadIdx.x, w = t / 32;
    emu_xch[t] = x;
    pthread_barrier_wait(&emu_warp_barrier[w]);
    float r = emu_xch[(t & ~31) | ((t & 31) ^ o)];
    pthread_barrier_wait(&emu_warp_barrier[w]);
    return r;
}

typedef void (*emu_kernel)(void *args);

struct emu_thread {
    unsigned tid;
    emu_kernel f;
    void *args;
};

static void *emu_thread_main(void *p) {
    struct emu_thread *t = (struct emu_thread *)p;
    threadIdx.x = t->tid;
    threadIdx.y = threadIdx.z = 0;
    t->f(t->args);
    return NULL;
}

/* Runs `f(args)` as a grid of blocks of `threads` threads (a multiple of 32, at most 1024). */
static void emu_launch(dim3 grid, unsigned threads, emu_kernel f, void *args) {
    if (threads == 0 || threads % 32 != 0 || threads > 1024) {
        fprintf(stderr, "emu_launch: %u threads per block\n", threads);
        exit(2);
    }
    dim3 block = {threads, 1, 1};
    gridDim = grid;
    blockDim = block;
    pthread_t ids[1024];
    struct emu_thread ts[1024];
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1 << 20);
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                dim3 at = {bx, by, bz};
                blockIdx = at;
                pthread_barrier_init(&emu_block_barrier, NULL, threads);
                for (unsigned w = 0; w < threads / 32; w++)
                    pthread_barrier_init(&emu_warp_barrier[w], NULL, 32);
                for (unsigned t = 0; t < threads; t++) {
                    ts[t].tid = t;
                    ts[t].f = f;
                    ts[t].args = args;
                    if (pthread_create(&ids[t], &attr, emu_thread_main, &ts[t]) != 0) {
                        fprintf(stderr, "emu_launch: pthread_create failed\n");
                        exit(2);
                    }
                }
                for (unsigned t = 0; t < threads; t++) pthread_join(ids[t], NULL);
                pthread_barrier_destroy(&emu_block_barrier);
                for (unsigned w = 0; w < threads / 32; w++)
                    pthread_barrier_destroy(&emu_warp_barrier[w]);
            }
    pthread_attr_destroy(&attr);
}

#endif
