/* Runs our kernels (the .cu files in kernels/) on the CPU (emu.h) for the tests
 * cuda_attention.rs and cuda_ops.rs:
 *   main attention IN OUT B HKV G DH CAP POS XK CK ROUND_Q Q_RS K_RS V_RS SCALE
 *     IN: q, k, v, cos, sin (kind XK), kc, vc (kind CK) back to back; OUT: y, kc, vc.
 *   main add_rms_norm IN OUT R D X_RS Y_RS EPS XK
 *     IN: x (R*X_RS), y (R*Y_RS), w (D); OUT: s, h (R*D each).
 *   main swiglu IN OUT R F G_RS U_RS XK
 *     IN: gate (R*G_RS), up (R*U_RS); OUT: h (R*F).
 *   main adamw IN OUT N DECAY NB1 B2 NB2 EPS BC2 STEP
 *     IN: p, g, m, v (N f32 each); OUT: p, m, v after the step (m, v as the kernel's m2, v2).
 *   main softmax IN OUT ROWS T S SCALE XK
 *     IN: x (ROWS*S); OUT: y. main softmax_bwd, same arguments: IN: y, dy; OUT: dx.
 *   main f16 IN OUT: IN's f32 values to f16 bits and back (u16, f32 each).
 * Element kinds: 0 f32, 1 bf16, 2 f16. */
#include "emu.h"
#include "../../kernels/decode_attention.cu"
#include "../../kernels/rows.cu"
#include "../../kernels/adamw.cu"
#include "../../kernels/softmax.cu"

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

static size_t kind_size(int k) { return k == 0 ? 4 : 2; }

struct rows_args {
    void *x, *y, *w, *s, *h;
    long long x_rs, y_rs;
    int r, d, xk;
    float eps;
};

static void run_norm(void *p) {
    struct rows_args *a = (struct rows_args *)p;
    add_rms_norm(a->x, a->y, a->x_rs, a->y_rs, a->w, a->s, a->h, a->d, a->eps, a->xk);
}

static void run_swiglu(void *p) {
    struct rows_args *a = (struct rows_args *)p;
    swiglu(a->x, a->y, a->x_rs, a->y_rs, a->h, a->d, a->xk);
}

static int rows_main(int argc, char **argv) {
    int norm = strcmp(argv[1], "add_rms_norm") == 0;
    if (argc != (norm ? 10 : 9)) {
        fprintf(stderr, "usage: see main.c\n");
        return 2;
    }
    struct rows_args a;
    a.r = atoi(argv[4]);
    a.d = atoi(argv[5]);
    a.x_rs = atoll(argv[6]);
    a.y_rs = atoll(argv[7]);
    a.eps = norm ? strtof(argv[8], NULL) : 0.f;
    a.xk = atoi(argv[norm ? 9 : 8]);
    size_t xs = kind_size(a.xk), n = (size_t)a.r * a.d;
    FILE *in = fopen(argv[2], "rb");
    if (!in) return 2;
    a.x = take(in, a.r * a.x_rs, xs);
    a.y = take(in, a.r * a.y_rs, xs);
    a.w = norm ? take(in, a.d, xs) : NULL;
    fclose(in);
    a.s = calloc(n, xs);
    a.h = calloc(n, xs);
    if (norm) {
        dim3 grid = {(unsigned)a.r, 1, 1};
        emu_launch(grid, NWARPS * 32, run_norm, &a);
    } else {
        dim3 grid = {(unsigned)((a.d + 255) / 256), (unsigned)a.r, 1};
        emu_launch(grid, 256, run_swiglu, &a);
    }
    FILE *out = fopen(argv[3], "wb");
    if (!out) return 2;
    if (norm) put(out, a.s, n, xs);
    put(out, a.h, n, xs);
    fclose(out);
    return 0;
}

struct adamw_args {
    float *p, *g, *m, *v, *m2, *v2;
    long long n;
    float c[7];
};

static void run_adamw(void *p) {
    struct adamw_args *a = (struct adamw_args *)p;
    adamw(a->p, a->g, a->m, a->v, a->m2, a->v2, a->n, a->c[0], a->c[1], a->c[2], a->c[3], a->c[4], a->c[5],
          a->c[6]);
}

static int adamw_main(int argc, char **argv) {
    if (argc != 12) {
        fprintf(stderr, "usage: see main.c\n");
        return 2;
    }
    struct adamw_args a;
    a.n = atoll(argv[4]);
    for (int i = 0; i < 7; i++) a.c[i] = strtof(argv[5 + i], NULL);
    FILE *in = fopen(argv[2], "rb");
    if (!in) return 2;
    a.p = (float *)take(in, a.n, 4);
    a.g = (float *)take(in, a.n, 4);
    a.m = (float *)take(in, a.n, 4);
    a.v = (float *)take(in, a.n, 4);
    fclose(in);
    a.m2 = (float *)calloc(a.n ? a.n : 1, 4);
    a.v2 = (float *)calloc(a.n ? a.n : 1, 4);
    /* Fewer threads than elements: the grid-stride loop covers the rest. */
    dim3 grid = {3, 1, 1};
    emu_launch(grid, 64, run_adamw, &a);
    FILE *out = fopen(argv[3], "wb");
    if (!out) return 2;
    put(out, a.p, a.n, 4);
    put(out, a.m2, a.n, 4);
    put(out, a.v2, a.n, 4);
    fclose(out);
    return 0;
}

struct softmax_args {
    void *a, *b, *out;
    int t, s, xk;
    float scale;
};

static void run_softmax(void *p) {
    struct softmax_args *a = (struct softmax_args *)p;
    causal_softmax(a->a, a->out, a->t, a->s, a->scale, a->xk);
}

static void run_softmax_bwd(void *p) {
    struct softmax_args *a = (struct softmax_args *)p;
    causal_softmax_bwd(a->a, a->b, a->out, a->t, a->s, a->scale, a->xk);
}

static int softmax_main(int argc, char **argv) {
    int bwd = strcmp(argv[1], "softmax_bwd") == 0;
    if (argc != 9) {
        fprintf(stderr, "usage: see main.c\n");
        return 2;
    }
    struct softmax_args a;
    int rows = atoi(argv[4]);
    a.t = atoi(argv[5]);
    a.s = atoi(argv[6]);
    a.scale = strtof(argv[7], NULL);
    a.xk = atoi(argv[8]);
    size_t xs = kind_size(a.xk), n = (size_t)rows * a.s;
    FILE *in = fopen(argv[2], "rb");
    if (!in) return 2;
    a.a = take(in, n, xs);
    a.b = bwd ? take(in, n, xs) : NULL;
    fclose(in);
    a.out = calloc(n ? n : 1, xs);
    dim3 grid = {(unsigned)rows, 1, 1};
    emu_launch(grid, NWARPS * 32, bwd ? run_softmax_bwd : run_softmax, &a);
    FILE *out = fopen(argv[3], "wb");
    if (!out) return 2;
    put(out, a.out, n, xs);
    fclose(out);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: see main.c\n");
        return 2;
    }
    if (strcmp(argv[1], "softmax") == 0 || strcmp(argv[1], "softmax_bwd") == 0)
        return softmax_main(argc, argv);
    if (strcmp(argv[1], "adamw") == 0) return adamw_main(argc, argv);
    if (strcmp(argv[1], "add_rms_norm") == 0 || strcmp(argv[1], "swiglu") == 0)
        return rows_main(argc, argv);
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
    if (argc != 17 || strcmp(argv[1], "attention") != 0) {
        fprintf(stderr, "usage: see main.c\n");
        return 2;
    }
    argv++; /* the attention arguments from argv[1] = IN on, as before */
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
