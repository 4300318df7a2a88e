/* Runs kernels/decode_attention.cu (both kernels) on the CPU (emu.h) for tests/cuda_kernels.rs.
 *   decode_attention IN OUT B HKV G DH CAP POS XK CK ROUND_Q Q_RS K_RS V_RS SCALE
 * IN holds q, k, v, cos, sin (kind XK), kc, vc (kind CK) back to back; OUT gets y, kc, vc.
 * With only `f16 IN OUT` it converts: IN's f32 values to f16 bits and those back (u16, f32). */
#include "emu.h"
#include "../../kernels/decode_attention.cu"

struct args {
    void *q, *k, *v, *cosv, *sinv, *kc, *vc, *y;
    float *part, *ml;
    long long q_rs, k_rs, v_rs;
    int hkv, g, dh, cap, pos, xk, ck, round_q, nsplit;
    float scale;
};

static void run(void *p) {
    struct args *a = (struct args *)p;
    decode_attention(a->q, a->k, a->v, a->q_rs, a->k_rs, a->v_rs, a->cosv, a->sinv, a->kc, a->vc,
                     a->part, a->ml, a->hkv, a->g, a->dh, a->cap, a->pos, a->scale, a->xk, a->ck,
                     a->round_q);
}

static void combine(void *p) {
    struct args *a = (struct args *)p;
    decode_attention_combine(a->part, a->ml, a->y, a->hkv, a->g, a->dh, a->nsplit, a->xk);
}

static void *take(FILE *f, size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (!p || fread(p, size, n, f) != n) {
        fprintf(stderr, "short input\n");
        exit(2);
    }
    return p;
}

static void put(FILE *f, const void *p, size_t n, size_t size) {
    if (fwrite(p, size, n, f) != n) {
        fprintf(stderr, "short write\n");
        exit(2);
    }
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "f16") == 0) {
        FILE *in = fopen(argv[2], "rb"), *out = fopen(argv[3], "wb");
        if (!in || !out) return 2;
        fseek(in, 0, SEEK_END);
        size_t n = (size_t)ftell(in) / 4;
        fseek(in, 0, SEEK_SET);
        float *x = (float *)take(in, n, 4);
        for (size_t i = 0; i < n; i++) {
            unsigned short h = f32_to_f16(x[i]);
            float back = f16_to_f32(h);
            put(out, &h, 1, 2);
            put(out, &back, 1, 4);
        }
        fclose(out);
        return 0;
    }
    if (argc != 16) {
        fprintf(stderr, "usage: IN OUT B HKV G DH CAP POS XK CK ROUND_Q Q_RS K_RS V_RS SCALE\n");
        return 2;
    }
    struct args a;
    int nb = atoi(argv[3]);
    a.hkv = atoi(argv[4]);
    a.g = atoi(argv[5]);
    a.dh = atoi(argv[6]);
    a.cap = atoi(argv[7]);
    a.pos = atoi(argv[8]);
    a.xk = atoi(argv[9]);
    a.ck = atoi(argv[10]);
    a.round_q = atoi(argv[11]);
    a.q_rs = atoll(argv[12]);
    a.k_rs = atoll(argv[13]);
    a.v_rs = atoll(argv[14]);
    a.scale = strtof(argv[15], NULL);
    size_t xs = a.xk == 0 ? 4 : 2, cs = a.ck == 0 ? 4 : 2;
    size_t ncache = (size_t)nb * a.hkv * a.cap * a.dh, ny = (size_t)nb * a.hkv * a.g * a.dh;
    FILE *in = fopen(argv[1], "rb");
    if (!in) return 2;
    a.q = take(in, nb * a.q_rs, xs);
    a.k = take(in, nb * a.k_rs, xs);
    a.v = take(in, nb * a.v_rs, xs);
    a.cosv = take(in, a.dh / 2, xs);
    a.sinv = take(in, a.dh / 2, xs);
    a.kc = take(in, ncache, cs);
    a.vc = take(in, ncache, cs);
    fclose(in);
    a.y = calloc(ny, xs);
    a.nsplit = (a.pos + 1 + SPLIT - 1) / SPLIT;
    /* NaN-filled scratch: every value the combine reads must have been written. */
    size_t npart = (size_t)nb * a.hkv * a.nsplit * a.g * a.dh, nml = npart / a.dh * 2;
    a.part = (float *)malloc(npart * 4);
    a.ml = (float *)malloc(nml * 4);
    for (size_t i = 0; i < npart; i++) a.part[i] = NAN;
    for (size_t i = 0; i < nml; i++) a.ml[i] = NAN;
    dim3 grid = {(unsigned)a.nsplit, (unsigned)a.hkv, (unsigned)nb};
    emu_launch(grid, NWARPS * 32, run, &a);
    dim3 grid2 = {(unsigned)a.hkv, (unsigned)nb, 1};
    emu_launch(grid2, NWARPS * 32, combine, &a);
    FILE *out = fopen(argv[2], "wb");
    if (!out) return 2;
    put(out, a.y, ny, xs);
    put(out, a.kc, ncache, cs);
    put(out, a.vc, ncache, cs);
    fclose(out);
    return 0;
}
