/* The gate head of the separable global op (rfsearch.ops.attention.SpatialSeparablePool) as one
 * call each way: on the profiles p (n, h + w, c), channels innermost,
 *
 *   z = W1 p + b1            the reduce 1×1 layer (hid outputs per profile row)
 *   y = BN(z)                batch statistics over the n (h + w) rows (training), the running ones
 *                            (evaluation), or y = z (the folded form: the BN is an nn.Identity)
 *   m = hardswish(y)
 *   a_h = sigmoid(Wh m + bh) on rows 0..h-1,  a_w = sigmoid(Ww m + bw) on rows h..h+w-1
 *
 * In PyTorch these are ~20 small operations forward and ~25 backward, each costing 10-30 µs of
 * dispatch and autograd on a CPU whatever its size; here the whole head takes 0.1-0.4 ms (batch
 * 32, the main job's shapes, 1 thread). Same formulas as ATen (BN statistics in double, as its CPU
 * kernel; hardswish and its gradient piecewise as ATen writes them); sums run in another order, so
 * float32 results differ by a few ulps. Gradients of the weights are summed per group of samples
 * (a fixed split), then over the groups in order, so no result depends on the number of threads.
 * geom: n, h + w, h, c, hid. params: W1 (hid, c), b1, gamma, beta (hid; gamma NULL: no BN), Wh, Ww
 * (c, hid), bh, bw (c). Every entry point returns 0, or 1 when a buffer could not be allocated
 * (its outputs are then incomplete). */

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define HEAD_GROUPS 8 /* the fixed split of the samples for the weight gradients' partial sums */

typedef struct {
    int64_t n, len, h, c, hid;
} HeadShape;

typedef struct {
    const float *w1, *b1, *gamma, *beta, *wh, *bh, *ww, *bw;
} HeadParams;

static HeadShape head_shape(const int64_t *g) {
    HeadShape s = {g[0], g[1], g[2], g[3], g[4]};
    return s;
}

static HeadParams head_params(const float *const *p) {
    HeadParams hp = {p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]};
    return hp;
}

/* (c, hid) → (hid, c): the gates' weights with the channels contiguous, for the vector loops. */
static float *transposed(const float *w, int64_t c, int64_t hid) {
    float *t = malloc(sizeof(float) * (size_t)(c * hid));
    if (t)
        for (int64_t ch = 0; ch < c; ch++)
            for (int64_t k = 0; k < hid; k++) t[k * c + ch] = w[ch * hid + k];
    return t;
}

/* Σ a·b over n floats. Not inlined: inside the loops over the hid outputs GCC would vectorise
 * that short loop instead (hid = 8-15 lanes) and run the rest scalar. */
__attribute__((noinline)) static float dotf(const float *restrict a, const float *restrict b, int64_t n) {
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; i++) sum += a[i] * b[i];
    return sum;
}

/* v = 1 / (1 + exp(-v)) in place, vectorised: exp as Cephes' expf (2^n · a degree-6 polynomial on
 * [-ln2/2, ln2/2], within 2 ulp; libm's expf is scalar and took most of the forward). exp's argument
 * is clamped to [-87.3, 88], which moves only results below 1e-38; NaN stays NaN. GCC turns the
 * clamps and the NaN test into vector selects only when comparisons may not trap (no trap is
 * enabled: the values are the same). */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-trapping-math")))
#endif
static void sigmoid_(float *restrict v, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float s = v[i], x = -s;
        x = x > 88.f ? 88.f : x;
        x = x < -87.3f ? -87.3f : x;
        float k = floorf(x * 1.44269504088896341f + 0.5f);
        float r = x - k * 0.693359375f + k * 2.12194440e-4f;
        float p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        p = p * r * r + r + 1.f;
        union { int32_t i; float f; } two = {.i = ((int32_t)k + 127) << 23};
        float y = 1.f / (1.f + p * two.f);
        v[i] = s != s ? s : y;
    }
}

static inline float hardswish(float y) {
    float r = y + 3.f;
    r = r < 0.f ? 0.f : (r > 6.f ? 6.f : r);
    return y * r / 6.f;
}

static inline float hardswish_grad(float y) { return y < -3.f ? 0.f : (y <= 3.f ? y / 3.f + 0.5f : 1.f); }

/* y of row r (hid values) from z, with the statistics the forward used. */
static void head_y(const float *restrict z, const double *stats, const HeadParams *hp, int64_t hid, float *restrict y) {
    for (int64_t k = 0; k < hid; k++) {
        if (!hp->gamma) { y[k] = z[k]; continue; }
        float xhat = (float)(((double)z[k] - stats[k]) * stats[hid + k]);
        y[k] = xhat * hp->gamma[k] + hp->beta[k];
    }
}

/* The gate row of profile row l of sample i: its output, weights (hid, c) and bias. */
static float *gate_row(float *ah, float *aw, const HeadShape *s, int64_t i, int64_t l) {
    int64_t w = s->len - s->h;
    return l < s->h ? ah + (i * s->h + l) * s->c : aw + (i * w + (l - s->h)) * s->c;
}

/* z (n, len, hid) is kept for the backward; stats (2, hid) gets the mean and 1/sqrt(var + eps) used.
 * batch: normalise with the batch's statistics and, where rm/rv are given and momentum >= 0, move
 * the running ones as BatchNorm does (the variance unbiased); else with rm/rv. */
int rf_head_forward(const float *p, float *ah, float *aw, float *z, double *stats, const int64_t *geom, const float *const *params,
                    float *rm, float *rv, int batch, double eps, double momentum, int threads) {
    HeadShape s = head_shape(geom);
    HeadParams hp = head_params(params);
    int64_t c = s.c, hid = s.hid, rows = s.n * s.len;
    float *wht = transposed(hp.wh, c, hid), *wwt = transposed(hp.ww, c, hid);
    int failed = !wht || !wwt;
    if (failed) { free(wht); free(wwt); return 1; }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t k = 0; k < hid; k++) z[r * hid + k] = dotf(hp.w1 + k * c, p + r * c, c) + hp.b1[k];
    }
    for (int64_t k = 0; k < hid; k++) {
        if (!hp.gamma) { stats[k] = 0.0; stats[hid + k] = 1.0; continue; }
        if (!batch) { stats[k] = rm[k]; stats[hid + k] = 1.0 / sqrt((double)rv[k] + eps); continue; }
        double mean = 0.0, var = 0.0;
        for (int64_t r = 0; r < rows; r++) mean += z[r * hid + k];
        mean /= (double)rows;
        for (int64_t r = 0; r < rows; r++) { double d = z[r * hid + k] - mean; var += d * d; }
        stats[k] = mean;
        stats[hid + k] = 1.0 / sqrt(var / (double)rows + eps);
        if (rm && rv && momentum >= 0.0) {
            rm[k] = (float)(momentum * mean + (1.0 - momentum) * rm[k]);
            rv[k] = (float)(momentum * var / (double)(rows - 1) + (1.0 - momentum) * rv[k]);
        }
    }
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *y = malloc(sizeof(float) * (size_t)hid);
        failed |= !y;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            if (!y) continue;
            int64_t i = r / s.len, l = r % s.len;
            head_y(z + r * hid, stats, &hp, hid, y);
            const float *restrict wt = l < s.h ? wht : wwt, *restrict b = l < s.h ? hp.bh : hp.bw;
            float *restrict out = gate_row(ah, aw, &s, i, l);
            for (int64_t ch = 0; ch < c; ch++) out[ch] = b[ch];
            for (int64_t k = 0; k < hid; k++) {
                float m = hardswish(y[k]);
                const float *restrict wk = wt + k * c;
                for (int64_t ch = 0; ch < c; ch++) out[ch] += m * wk[ch];
            }
            sigmoid_(out, c);
        }
        free(y);
    }
    free(wht); free(wwt);
    return failed;
}

/* gah/gaw: the gradients of a_h and a_w (NULL: zero). gp (n, len, c) and each of gparams (the
 * gradients of params, in their shapes) are written where not NULL. */
int rf_head_backward(const float *p, const float *z, const float *ah, const float *aw, const float *gah, const float *gaw,
                     const double *stats, const int64_t *geom, const float *const *params, int batch, float *gp, float *const *gparams,
                     int threads) {
    HeadShape s = head_shape(geom);
    HeadParams hp = head_params(params);
    int64_t c = s.c, hid = s.hid, rows = s.n * s.len, w = s.len - s.h;
    float *gw1 = gparams[0], *gb1 = gparams[1], *ggamma = gparams[2], *gbeta = gparams[3];
    float *gwh = gparams[4], *gbh = gparams[5], *gww = gparams[6], *gbw = gparams[7];
    int weights = gw1 || gb1 || gwh || gbh || gww || gbw;
    /* per group of samples: ∂Wh, ∂Ww as (hid, c), ∂bh, ∂bw, ∂W1 (hid, c), ∂b1 */
    size_t per = (size_t)(3 * hid * c + 2 * c + hid);
    int64_t groups = s.n < HEAD_GROUPS ? s.n : HEAD_GROUPS;
    float *wht = transposed(hp.wh, c, hid), *wwt = transposed(hp.ww, c, hid);
    float *gy = malloc(sizeof(float) * (size_t)(rows * hid));
    float *part = weights ? calloc((size_t)groups * per, sizeof(float)) : NULL;
    double *sums = calloc((size_t)(2 * hid), sizeof(double));
    int failed = !wht || !wwt || !gy || (weights && !part) || !sums;
    if (failed) { free(wht); free(wwt); free(gy); free(part); free(sums); return 1; }
    /* sigmoid, the gates' layers and hardswish: gy = ∂y per row; the gates' weight gradients */
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *buf = malloc(sizeof(float) * (size_t)(2 * hid + c));
        failed |= !buf;
#pragma omp for schedule(static)
        for (int64_t q = 0; q < groups; q++)
        for (int64_t i = q * s.n / groups; i < (q + 1) * s.n / groups; i++) {
            if (!buf) continue;
            float *restrict y = buf, *restrict gm = buf + hid, *restrict gs = buf + 2 * hid;
            float *pw = part ? part + q * per : NULL;
            for (int64_t l = 0; l < s.len; l++) {
                int64_t r = i * s.len + l;
                int top = l < s.h;
                const float *a = top ? ah + (i * s.h + l) * c : aw + (i * w + l - s.h) * c;
                const float *ga = top ? (gah ? gah + (i * s.h + l) * c : NULL) : (gaw ? gaw + (i * w + l - s.h) * c : NULL);
                const float *restrict wt = top ? wht : wwt;
                head_y(z + r * hid, stats, &hp, hid, y);
                if (!ga) { for (int64_t k = 0; k < hid; k++) gy[r * hid + k] = 0.f; continue; }
                for (int64_t ch = 0; ch < c; ch++) gs[ch] = ga[ch] * a[ch] * (1.f - a[ch]);
                for (int64_t k = 0; k < hid; k++) gm[k] = dotf(gs, wt + k * c, c);
                if (pw) {
                    float *restrict gwt = pw + (top ? 0 : hid * c), *restrict gb = pw + 2 * hid * c + (top ? 0 : c);
                    for (int64_t k = 0; k < hid; k++) {
                        float m = hardswish(y[k]);
                        for (int64_t ch = 0; ch < c; ch++) gwt[k * c + ch] += m * gs[ch];
                    }
                    for (int64_t ch = 0; ch < c; ch++) gb[ch] += gs[ch];
                }
                for (int64_t k = 0; k < hid; k++) gy[r * hid + k] = gm[k] * hardswish_grad(y[k]);
            }
        }
        free(buf);
    }
    /* BN: Σ ∂y and Σ ∂y · x̂ over the rows (∂beta and ∂gamma) */
    if (hp.gamma) {
        for (int64_t k = 0; k < hid; k++) {
            double sy = 0.0, syx = 0.0;
            for (int64_t r = 0; r < rows; r++) {
                double g = gy[r * hid + k];
                sy += g;
                syx += g * (((double)z[r * hid + k] - stats[k]) * stats[hid + k]);
            }
            sums[k] = sy; sums[hid + k] = syx;
            if (gbeta) gbeta[k] = (float)sy;
            if (ggamma) ggamma[k] = (float)syx;
        }
    }
    /* ∂z, then ∂p and the reduce layer's weight gradients */
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *gz = malloc(sizeof(float) * (size_t)hid);
        failed |= !gz;
#pragma omp for schedule(static)
        for (int64_t q = 0; q < groups; q++)
        for (int64_t i = q * s.n / groups; i < (q + 1) * s.n / groups; i++) {
            if (!gz) continue;
            float *pw = part ? part + q * per + 2 * hid * c + 2 * c : NULL;
            for (int64_t l = 0; l < s.len; l++) {
                int64_t r = i * s.len + l;
                for (int64_t k = 0; k < hid; k++) {
                    double g = gy[r * hid + k];
                    if (!hp.gamma) { gz[k] = (float)g; continue; }
                    double scale = hp.gamma[k] * stats[hid + k];
                    if (batch) {
                        double xhat = ((double)z[r * hid + k] - stats[k]) * stats[hid + k];
                        g -= (sums[k] + xhat * sums[hid + k]) / (double)rows;
                    }
                    gz[k] = (float)(g * scale);
                }
                const float *restrict pr = p + r * c;
                if (gp) {
                    float *restrict o = gp + r * c;
                    for (int64_t ch = 0; ch < c; ch++) o[ch] = 0.f;
                    for (int64_t k = 0; k < hid; k++) {
                        const float *restrict wk = hp.w1 + k * c;
                        for (int64_t ch = 0; ch < c; ch++) o[ch] += gz[k] * wk[ch];
                    }
                }
                if (pw) {
                    for (int64_t k = 0; k < hid; k++) {
                        float *restrict gk = pw + k * c;
                        for (int64_t ch = 0; ch < c; ch++) gk[ch] += gz[k] * pr[ch];
                        pw[hid * c + k] += gz[k];
                    }
                }
            }
        }
        free(gz);
    }
    /* the groups' parts summed in group order, each thread over its own range of elements */
    if (part) {
#pragma omp parallel num_threads(threads)
        {
            int nt = omp_get_num_threads(), t = omp_get_thread_num();
            int64_t lo = (int64_t)per * t / nt, hi = (int64_t)per * (t + 1) / nt;
            for (int64_t q = 1; q < groups; q++) {
                const float *restrict src = part + q * per;
                for (int64_t e = lo; e < hi; e++) part[e] += src[e];
            }
        }
        for (int64_t k = 0; k < hid; k++)
            for (int64_t ch = 0; ch < c; ch++) { /* (hid, c) back to the layers' (c, hid) */
                if (gwh) gwh[ch * hid + k] = part[k * c + ch];
                if (gww) gww[ch * hid + k] = part[hid * c + k * c + ch];
            }
        if (gbh) memcpy(gbh, part + 2 * hid * c, sizeof(float) * (size_t)c);
        if (gbw) memcpy(gbw, part + 2 * hid * c + c, sizeof(float) * (size_t)c);
        if (gw1) memcpy(gw1, part + 2 * hid * c + 2 * c, sizeof(float) * (size_t)(hid * c));
        if (gb1) memcpy(gb1, part + 3 * hid * c + 2 * c, sizeof(float) * (size_t)hid);
    }
    free(wht); free(wwt); free(gy); free(part); free(sums);
    return failed;
}

int rf_profiles_forward(const float *x, float *p, const int64_t *geom, int cb, int threads);
int rf_mix_forward(const float *x, float *y, const int64_t *geom, const int64_t *plan_data, const float *weights,
                   const float *const *factors, int cb, int threads);

/* The whole global op without autograd (evaluation, no gradient wanted): its profiles, the head
 * with BN's running statistics (or none, folded), then y = x · a_h · a_w, as one call: the same
 * three entry points, in the same order and with the same arguments as the module's path (the same
 * bits), without the ~60 µs of Python, autograd nodes and tensors that three calls take, which at
 * batch 1 cost more than the arithmetic. geom: n, c, h, w, x's then y's (sn, sh, sw), hid. */
int rf_global_forward(const float *x, float *y, const int64_t *geom, const float *const *params, float *rm, float *rv, double eps,
                      int profile_cb, int threads) {
    int64_t n = geom[0], c = geom[1], h = geom[2], w = geom[3], hid = geom[10];
    int64_t head_geom[5] = {n, h + w, h, c, hid};
    int64_t plan[5] = {0, 0, 0, 1, 1}; /* no identity, no pooling, one gate with a row and a column factor */
    float one = 1.f;
    float *p = malloc(sizeof(float) * (size_t)(n * (h + w) * c)), *ah = malloc(sizeof(float) * (size_t)(n * h * c));
    float *aw = malloc(sizeof(float) * (size_t)(n * w * c)), *z = malloc(sizeof(float) * (size_t)(n * (h + w) * hid));
    double *stats = malloc(sizeof(double) * (size_t)(2 * hid));
    int failed = !p || !ah || !aw || !z || !stats;
    if (!failed) failed = rf_profiles_forward(x, p, geom, profile_cb, threads);
    if (!failed) failed = rf_head_forward(p, ah, aw, z, stats, head_geom, params, rm, rv, 0, eps, -1.0, threads);
    const float *factors[2] = {ah, aw};
    if (!failed) failed = rf_mix_forward(x, y, geom, plan, &one, factors, (int)c, threads);
    free(p); free(ah); free(aw); free(z); free(stats);
    return failed ? 1 : 0;
}
