/* PuLID's ID branch of one row of an SDXL cross-attention call, fp32, in two passes over the tokens.
 *
 * The same math as the explicit path of pulid_core/attention.py (read that first): per token and head,
 * the logits against the ID keys, their softmax (the zero tokens as one column with bias log(num_zero),
 * padding columns with bias -inf), I = softmax * V (the weight already folded into V), and for
 * ortho_v2 the mass of the unscaled softmax on the columns after the first five. Pass 1 also sums
 * per channel the energy of H (plus a tiny per token) and <H, I>; pass 2 adds the projected term.
 * Written with GCC/Clang vector extensions (16 lanes; the compiler maps them to AVX-512, AVX2 pairs,
 * SSE or NEON); no library but OpenMP's runtime, and that only where the compiler has it.
 */
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

#define LANES 16
#define MAX_BLOCKS 4  /* at most 64 ID columns */
#define GROUP 4       /* tokens per step: four independent chains, the keys loaded once */
#define CHUNK 32      /* tokens per chunk: their I (CHUNK * heads * d) stays in the L2 cache */
#define MAX_THREADS 64

typedef struct {
    const float *q, *h, *kt, *v, *bias, *restw;
    float *out, *ibuf, *rest, *scratch, *factor;
    long q_stride, h_stride, out_stride, n, heads, d, width, v_cols, v_head;
    float scale, tiny;
    int mode, threads;
} job_t;

static inline v16 splat(float a) { v16 z = {0}; return z + a; }
static inline v16 vsel(v16i m, v16 a, v16 b) { return (v16)(((v16i)a & m) | ((v16i)b & ~m)); }
static inline v16 vmax(v16 a, v16 b) { return vsel(a > b, a, b); }
static inline v16 load16(const float *p) { v16 x; memcpy(&x, p, sizeof x); return x; }
static inline void store16(float *p, v16 x) { memcpy(p, &x, sizeof x); }

#ifdef __clang__
#define SWAP(x, ...) __builtin_shufflevector(x, x, __VA_ARGS__)
#else
#define SWAP(x, ...) __builtin_shuffle(x, (v16i){__VA_ARGS__})
#endif

/* The maximum / sum of the 16 lanes, in every lane. */
static inline v16 hmax(v16 x) {
    x = vmax(x, SWAP(x, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
    x = vmax(x, SWAP(x, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11));
    x = vmax(x, SWAP(x, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));
    return vmax(x, SWAP(x, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
}
static inline v16 hsum(v16 x) {
    x += SWAP(x, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    x += SWAP(x, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
    x += SWAP(x, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
    return x + SWAP(x, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
}

/* exp(x) for x <= 0 (a softmax after its max): 2^k e^r with |r| <= ln2/2 and e^r by its Taylor series
 * to r^7 (truncation below 1e-8 relative); results under 2^-126 (and -inf) give 0: next to the
 * maximum's 1 they are below fp32's resolution. NaN stays NaN (a broken input shows, as in torch). */
static inline v16 exp_nonpos(v16 x) {
    const v16 lo = splat(-100.0f);
    x = vsel(x < lo, lo, x);  /* false for NaN: kept */
    const v16 magic = splat(12582912.0f);  /* 1.5 * 2^23: the sum holds round(x / ln2) in its low bits */
    v16 kf = x * 1.44269504088896341f + magic;
    const v16i k = ((v16i)kf & 0x7fffff) - 0x400000;
    kf -= magic;
    v16 r = x - kf * 0.693145751953125f;  /* ln2 in two parts: the first exact in float */
    r = r - kf * 1.428606765330187e-06f;
    v16 p = r * (1.0f / 5040.0f) + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    return (v16)((v16i)(p * (v16)((k + 127) << 23)) & (k >= -126));
}

/* I of GROUP tokens for one head into is[g] [d]; adds each token's rest mass (ortho_v2) to mass[g].
 * kt [d, width] (the keys transposed), v [v_cols, d]. nb and d are constants where it is inlined. */
static inline __attribute__((always_inline)) void head_group(const job_t *j, const float *const *qs,
                                                             const float *kt, const float *v,
                                                             float *const *is, float *mass,
                                                             const long nb, const long d) {
    const long width = nb * LANES;
    v16 acc[GROUP][MAX_BLOCKS];
    for (int g = 0; g < GROUP; g++)
        for (long b = 0; b < nb; b++) acc[g][b] = splat(0.0f);
    for (long c = 0; c < d; c++) {
        v16 k[MAX_BLOCKS];
        for (long b = 0; b < nb; b++) k[b] = load16(kt + c * width + b * LANES);
        for (int g = 0; g < GROUP; g++) {
            const float qc = qs[g][c];
            for (long b = 0; b < nb; b++) acc[g][b] += qc * k[b];
        }
    }
    float p[GROUP][MAX_BLOCKS * LANES];
    for (int g = 0; g < GROUP; g++) {
        v16 s[MAX_BLOCKS], bias[MAX_BLOCKS];
        v16 m = splat(-__builtin_inff());
        for (long b = 0; b < nb; b++) {
            bias[b] = load16(j->bias + b * LANES);
            s[b] = acc[g][b] * j->scale + bias[b];
            m = vmax(m, s[b]);
        }
        m = hmax(m);
        v16 z = splat(0.0f);
        for (long b = 0; b < nb; b++) {
            s[b] = exp_nonpos(s[b] - m);
            z += s[b];
        }
        const v16 inv = splat(1.0f) / hsum(z);
        for (long b = 0; b < nb; b++) store16(p[g] + b * LANES, s[b] * inv);
        if (j->mode == 2) {
            v16 m2 = splat(-__builtin_inff());
            for (long b = 0; b < nb; b++) {
                acc[g][b] += bias[b];
                m2 = vmax(m2, acc[g][b]);
            }
            m2 = hmax(m2);
            v16 all = splat(0.0f), rest = splat(0.0f);
            for (long b = 0; b < nb; b++) {
                const v16 e = exp_nonpos(acc[g][b] - m2);
                all += e;
                rest += e * load16(j->restw + b * LANES);
            }
            mass[g] += hsum(rest)[0] / hsum(all)[0];
        }
    }
    if (d % LANES == 0 && d <= 8 * LANES) {
        const long nd = d / LANES;
        v16 out[GROUP][8];
        for (int g = 0; g < GROUP; g++)
            for (long c = 0; c < nd; c++) out[g][c] = splat(0.0f);
        for (long t = 0; t < j->v_cols; t++) {
            v16 vt[8];
            for (long c = 0; c < nd; c++) vt[c] = load16(v + t * d + c * LANES);
            for (int g = 0; g < GROUP; g++) {
                const float w = p[g][t];
                for (long c = 0; c < nd; c++) out[g][c] += w * vt[c];
            }
        }
        for (int g = 0; g < GROUP; g++)
            for (long c = 0; c < nd; c++) store16(is[g] + c * LANES, out[g][c]);
    } else {
        for (int g = 0; g < GROUP; g++) {
            for (long c = 0; c < d; c++) is[g][c] = 0.0f;
            for (long t = 0; t < j->v_cols; t++)
                for (long c = 0; c < d; c++) is[g][c] += p[g][t] * v[t * d + c];
        }
    }
}

static void heads_of_group(const job_t *j, const float *const *qs, float *const *is, float *mass) {
    const long d = j->d, nb = j->width / LANES;
    for (long hd = 0; hd < j->heads; hd++) {
        const float *q4[GROUP] = {qs[0] + hd * d, qs[1] + hd * d, qs[2] + hd * d, qs[3] + hd * d};
        float *i4[GROUP] = {is[0] + hd * d, is[1] + hd * d, is[2] + hd * d, is[3] + hd * d};
        const float *kt = j->kt + hd * d * j->width, *v = j->v + hd * j->v_head;
        /* Constant block counts and head width: the accumulators live in registers. */
        if (d == 64) {
            switch (nb) {
                case 1: head_group(j, q4, kt, v, i4, mass, 1, 64); break;
                case 2: head_group(j, q4, kt, v, i4, mass, 2, 64); break;
                case 3: head_group(j, q4, kt, v, i4, mass, 3, 64); break;
                default: head_group(j, q4, kt, v, i4, mass, 4, 64); break;
            }
        } else {
            head_group(j, q4, kt, v, i4, mass, nb, d);
        }
    }
}

/* Pass 1 over this thread's tokens: I, the rest mass, and the per-channel sums. */
static void pass_one(const job_t *j, int tid) {
    const long n = j->n, inner = j->heads * j->d;
    const long a = n * tid / j->threads, e = n * (tid + 1) / j->threads;
    float *energy = j->scratch + (long)tid * 2 * inner, *dot = energy + inner;
    float *tok = j->scratch + ((long)j->threads * 2 + (long)tid * (CHUNK + 3)) * inner;
    float *spare = tok + CHUNK * inner;  /* where the padding lanes of a last short group write */
    /* The sums in two levels, a chunk's tokens then the chunks (one running fp32 sum over 16 K tokens
     * would lose about 1e-4 against torch's blocked sums). */
    float *chunk_energy = spare + inner, *chunk_dot = chunk_energy + inner;
    if (j->mode) memset(energy, 0, 2 * inner * sizeof(float));
    for (long s = a; s < e; s += CHUNK) {
        const long m = e - s < CHUNK ? e - s : CHUNK;
        float mass[CHUNK + GROUP] = {0};
        for (long g = 0; g < m; g += GROUP) {
            const float *qs[GROUP];
            float *is[GROUP];
            for (int u = 0; u < GROUP; u++) {
                const long i = g + u < m ? g + u : m - 1;
                qs[u] = j->q + (s + i) * j->q_stride;
                is[u] = g + u < m ? tok + (g + u) * inner : spare;
            }
            heads_of_group(j, qs, is, mass + g);
        }
        if (j->mode) {
            memset(chunk_energy, 0, inner * sizeof(float));
            memset(chunk_dot, 0, inner * sizeof(float));
        }
        for (long i = 0; i < m; i++) {
            const float *hi = j->h + (s + i) * j->h_stride, *ti = tok + i * inner;
            if (j->mode == 0) {
                float *o = j->out + (s + i) * j->out_stride;
                for (long c = 0; c < inner; c++) o[c] = ti[c] + hi[c];
                continue;
            }
            if (j->mode == 2) j->rest[s + i] = mass[i];
            float *dst = j->ibuf ? j->ibuf + (s + i) * inner : j->out + (s + i) * j->out_stride;
            const float tiny = j->tiny;
            for (long c = 0; c < inner; c++) {
                chunk_energy[c] += hi[c] * hi[c] + tiny;
                chunk_dot[c] += hi[c] * ti[c];
                dst[c] = ti[c];
            }
        }
        if (j->mode) {
            for (long c = 0; c < inner; c++) {
                energy[c] += chunk_energy[c];
                dot[c] += chunk_dot[c];
            }
        }
    }
}

/* Pass 2: H (1 - c) + I (ortho) or H (1 - rest / heads * c) + I (ortho_v2), c = <H, I> / |H|^2. */
static void pass_two(const job_t *j, int tid) {
    const long n = j->n, inner = j->heads * j->d;
    const long a = n * tid / j->threads, e = n * (tid + 1) / j->threads;
    const float *f = j->factor;
    for (long i = a; i < e; i++) {
        const float *hi = j->h + i * j->h_stride;
        float *o = j->out + i * j->out_stride;
        const float *ii = j->ibuf ? j->ibuf + i * inner : o;
        if (j->mode == 1) {
            for (long c = 0; c < inner; c++) o[c] = ii[c] + hi[c] * f[c];
        } else {
            const float s = -j->rest[i] / (float)j->heads;
            for (long c = 0; c < inner; c++) o[c] = ii[c] + hi[c] * (1.0f + s * f[c]);
        }
    }
}

static void run_pass(const job_t *j, int pass, int tid) {
    if (pass == 1) pass_one(j, tid); else pass_two(j, tid);
}

/* Runs a pass split into j->threads shares. With OpenMP, on that many threads of the caller's pool:
 * torch's own where this library shares torch's OpenMP runtime (its threads wait there between
 * torch's ops; a second pool would fight them for the cores). Shares without a thread run here. */
static void in_parallel(const job_t *j, int pass) {
#ifdef _OPENMP
    if (j->threads > 1) {
#pragma omp parallel num_threads(j->threads)
        {
            const int tid = omp_get_thread_num(), got = omp_get_num_threads();
            for (int t = tid; t < j->threads; t += got) run_pass(j, pass, t);
        }
        return;
    }
#endif
    for (int t = 0; t < j->threads; t++) run_pass(j, pass, t);
}

/* The scratch buffer this needs, in floats. */
long pulid_scratch_floats(long heads, long d, int threads) {
    return ((long)threads * (2 + CHUNK + 3) + 1) * heads * d;
}

/* One batch row. q, h, out [n, heads * d] with the given token strides (channels contiguous); out may
 * be h itself if ibuf [n, heads * d] is given (I is kept there). kt [heads, d, width], v [heads, *, d]
 * with v_head floats per head, of which the first v_cols rows are used; bias, restw [width]; rest [n];
 * scratch: pulid_scratch_floats. mode 0 none, 1 ortho, 2 ortho_v2. Returns 0, or 1 for arguments it
 * does not take (nothing written). */
int pulid_id_row(const float *q, long q_stride, const float *h, long h_stride, float *out, long out_stride,
                 float *ibuf, const float *kt, const float *v, const float *bias, const float *restw,
                 float *rest, float *scratch, long n, long heads, long d, long width, long v_cols,
                 long v_head, float scale, float tiny, int mode, int threads) {
    if (threads < 1 || threads > MAX_THREADS || n < 1 || heads < 1 || d < 1 || width < LANES ||
        width > MAX_BLOCKS * LANES || width % LANES || v_cols < 1 || v_cols > width || v_head < v_cols * d ||
        mode < 0 || mode > 2 || (out == h && mode && !ibuf))
        return 1;
    if (threads > n) threads = (int)n;
    job_t j = {q, h, kt, v, bias, restw, out, ibuf, rest, scratch, NULL, q_stride, h_stride, out_stride,
               n, heads, d, width, v_cols, v_head, scale, tiny, mode, threads};
    in_parallel(&j, 1);
    if (mode == 0) return 0;
    const long inner = heads * d;
    float *factor = scratch + (long)threads * (2 + CHUNK + 3) * inner;
    for (long c = 0; c < inner; c++) {
        float energy = 0.0f, dot = 0.0f;
        for (int t = 0; t < threads; t++) {
            energy += scratch[(long)t * 2 * inner + c];
            dot += scratch[(long)t * 2 * inner + inner + c];
        }
        factor[c] = mode == 1 ? 1.0f - dot / energy : dot / energy;
    }
    j.factor = factor;
    in_parallel(&j, 2);
    return 0;
}

/* 1 where this library was built with OpenMP (its passes can run on several threads). */
int pulid_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
