/* The fused mix of rfsearch.ops.fused in one pass per tile: rfsearch.ops.native compiles this file
 * on first use and calls it through ctypes (float32, CPU, channels_last). A tile is one sample's
 * map for a block of channels, sized to stay in cache; every candidate of the point is computed
 * from it, with the channels as the contiguous (vectorised) inner loop, where the shift backend
 * makes ~100 passes over the whole tensor. Same results as the plain weighted sum of nn modules:
 *
 *   identity and gates   y = S ⊙ x, S = w_id + Σ_g v_g · A_g(i, c) · B_g(j, c)   (or v_g · s_g(c))
 *   average pooling      clipped box sums (zero padding) times 1/count, or 1/k² (count_include_pad)
 *   max pooling          clipped window maxima; the backward routes each gradient to the window's
 *                        first maximum in row-major order, as MaxPool2d does (ties included)
 *
 * plan: has_id, n_avg, (rh, rw, k)*, n_max, (rh, rw)*, n_gate, (has_b)*; weights in that order
 * (identity, avg groups, max groups, gates). geom: n, c, h, w, then (sn, sh, sw) of each map
 * argument; channels are contiguous (stride 1), cb of them per tile. Gate factors are pixel-major: A (n, h, c), B
 * (n, w, c), s (n, c). Weight gradients are written per tile (float64) and summed by the caller
 * in tile order, so no result depends on the number of threads. Every entry point returns 0, or 1
 * when a thread could not allocate its tile (its outputs are then incomplete). */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int has_id, n_avg, n_max, n_gate, n_weights;
    const int64_t *avg, *max, *has_b;
} Plan;

static Plan read_plan(const int64_t *p) {
    Plan plan;
    int at = 0;
    plan.has_id = (int)p[at++];
    plan.n_avg = (int)p[at++];
    plan.avg = p + at;
    at += 3 * plan.n_avg;
    plan.n_max = (int)p[at++];
    plan.max = p + at;
    at += 2 * plan.n_max;
    plan.n_gate = (int)p[at++];
    plan.has_b = p + at;
    plan.n_weights = plan.has_id + plan.n_avg + plan.n_max + plan.n_gate;
    return plan;
}

typedef struct {
    int64_t n, c, h, w;
} Shape;

typedef struct {
    int64_t sn, sh, sw;
} Strides;

static inline float fmax_nan(float a, float b) { return ((a > b) | (a != a)) ? a : b; }

/* A tile: h × w pixels of `len` channels, pixel-major (pixel (i, j) at (i * w + j) * len), so a
 * row of the map is one contiguous run of w * len floats and a shift by d pixels is a shift by
 * d * len: the loops below run along whole rows and vectorise. */
typedef struct {
    int h, w, cb, len;
    size_t size;
    float *x, *g, *acc, *rows, *tmp, *vec, *suf;
    float *win, *dwx; /* one map row each: a column window's result, the column divisors */
    int32_t *col, *jidx, *suf_at;
} Tile;

static int tile_init(Tile *t, int h, int w, int cb) {
    t->h = h; t->w = w; t->cb = cb;
    t->size = (size_t)h * w * cb;
    size_t line = (size_t)(h > w ? h : w) * cb;
    t->x = malloc(t->size * sizeof(float));
    t->g = malloc(t->size * sizeof(float));
    t->acc = malloc(t->size * sizeof(float));
    t->rows = malloc(t->size * sizeof(float));
    t->tmp = malloc(t->size * sizeof(float));
    t->vec = malloc(4 * line * sizeof(float));
    t->col = malloc(t->size * sizeof(int32_t));
    t->jidx = malloc((size_t)w * cb * sizeof(int32_t));
    t->suf = malloc(t->size * sizeof(float));
    t->suf_at = malloc(t->size * sizeof(int32_t));
    if (t->vec) { t->win = t->vec + 2 * line; t->dwx = t->win + line; }
    return t->x && t->g && t->acc && t->rows && t->tmp && t->vec && t->col && t->jidx && t->suf && t->suf_at;
}

static void tile_free(Tile *t) {
    free(t->x); free(t->g); free(t->acc); free(t->rows); free(t->tmp); free(t->vec); free(t->col); free(t->jidx);
    free(t->suf); free(t->suf_at);
}

static void tile_start(Tile *t, int len) {
    t->len = len;
    for (int j = 0; j < t->w; j++)
        for (int c = 0; c < len; c++) t->jidx[j * len + c] = j * len; /* column j's offset in a row */
}

#define ROW(t, buf, i) ((buf) + (size_t)(i) * (t)->w * (t)->len)
#define PIX(t, buf, i, j) ((buf) + ((size_t)(i) * (t)->w + (j)) * (t)->len)

/* Copies between a tile and the map: whole rows at once where the tile holds every channel, else
 * one pixel's channels at a time (inline: a memcpy call per pixel costs more than the copy). */
static void copy_pixels(float *restrict dst, const float *restrict src, int len) {
    for (int c = 0; c < len; c++) dst[c] = src[c];
}

static void load(Tile *t, const float *src, Strides s, float *dst) {
    for (int i = 0; i < t->h; i++) {
        if (s.sw == t->len) { memcpy(ROW(t, dst, i), src + i * s.sh, (size_t)t->w * t->len * sizeof(float)); continue; }
        for (int j = 0; j < t->w; j++) copy_pixels(PIX(t, dst, i, j), src + i * s.sh + j * s.sw, t->len);
    }
}

static void store(Tile *t, const float *src, float *dst, Strides s) {
    for (int i = 0; i < t->h; i++) {
        if (s.sw == t->len) { memcpy(dst + i * s.sh, ROW(t, src, i), (size_t)t->w * t->len * sizeof(float)); continue; }
        for (int j = 0; j < t->w; j++) copy_pixels(dst + i * s.sh + j * s.sw, PIX(t, src, i, j), t->len);
    }
}

/* Whether a sample's map, from channel 0, is laid out as the tile (all channels in one block, rows
 * contiguous): the tile then reads or writes the map in place, with no copy. */
static int same_layout(const Tile *t, Strides s) {
    return s.sw == t->len && s.sh == (int64_t)t->w * t->len;
}

static void add_(float *restrict o, const float *restrict a, size_t n) {
    for (size_t e = 0; e < n; e++) o[e] += a[e];
}

static void max_(float *restrict o, const float *restrict a, size_t n) {
    for (size_t e = 0; e < n; e++) o[e] = fmax_nan(o[e], a[e]);
}

/* rows = clipped row-window sums (op 0) or maxima (op 1) of src with radius r, grown in place
 * from radius r0 (0: start from src). Pixel j gets pixel j - d from the left (j >= d) and pixel
 * j + d from the right (j + d < w): two runs of (w - d) pixels per row. */
static void row_windows(Tile *t, const float *src, int r0, int r, int op) {
    size_t line = (size_t)t->w * t->len;
    if (r0 == 0) memcpy(t->rows, src, (size_t)t->h * line * sizeof(float));
    for (int d = r0 + 1; d <= r && d < t->w; d++) {
        size_t shift = (size_t)d * t->len, n = line - shift;
        for (int i = 0; i < t->h; i++) {
            float *o = ROW(t, t->rows, i);
            const float *a = ROW(t, src, i);
            if (op) { max_(o + shift, a, n); max_(o, a + shift, n); }
            else { add_(o + shift, a, n); add_(o, a + shift, n); }
        }
    }
}

/* Long column windows of maxima run as blocks of k = 2r + 1 rows (van Herk, Gil-Werman): a window
 * [lo, hi] is the merge of lo's suffix in its block (rows lo to the block's end) and hi's prefix in
 * the next block (that block's start to hi), about three row operations per output row whatever r,
 * where merging row by row takes 2r. Windows clipped at the top start a block (the prefix alone);
 * a window that starts inside the block holding the map's last row is the suffix alone. */
static int col_blocks_pay(int h, int r) {
    long direct = 0;
    for (int i = 0; i < h; i++) direct += (i + r > h - 1 ? h - 1 : i + r) - (i - r < 0 ? 0 : i - r);
    return direct > 3L * h;
}

/* t->suf(i) = rows i to the end of i's block of k merged; with_at: the winners' offsets (row · line
 * + column · len) in t->suf_at, a later row winning only when larger or NaN (the first maximum or
 * the last NaN, as max_route's rows); without: values, merged as col_accumulate merges them. */
static void col_suffixes(Tile *t, int k, int with_at) {
    size_t line = (size_t)t->w * t->len;
    for (int b0 = 0; b0 < t->h; b0 += k) {
        int end = b0 + k - 1 > t->h - 1 ? t->h - 1 : b0 + k - 1;
        memcpy(ROW(t, t->suf, end), ROW(t, t->rows, end), line * sizeof(float));
        if (with_at) {
            int32_t *restrict oa = t->suf_at + (size_t)end * line;
            const int32_t *restrict ca = t->col + (size_t)end * line;
            for (size_t e = 0; e < line; e++) oa[e] = (int32_t)(end * line) + ca[e];
        }
        for (int r = end - 1; r >= b0; r--) {
            const float *restrict a = ROW(t, t->rows, r), *restrict b = ROW(t, t->suf, r + 1);
            float *restrict o = ROW(t, t->suf, r);
            if (!with_at) {
                for (size_t e = 0; e < line; e++) o[e] = fmax_nan(a[e], b[e]);
                continue;
            }
            const int32_t *restrict ca = t->col + (size_t)r * line, *restrict ba = t->suf_at + (size_t)(r + 1) * line;
            int32_t *restrict oa = t->suf_at + (size_t)r * line;
            int32_t base = (int32_t)(r * line);
            for (size_t e = 0; e < line; e++) {
                int take = (b[e] > a[e]) | (b[e] != b[e]);
                o[e] = take ? b[e] : a[e];
                oa[e] = take ? ba[e] : base + ca[e];
            }
        }
    }
}

/* For every output row i: the clipped column window (radius r) of rows, summed (op 0: a running
 * sum down the map, two row operations per output row whatever r) or maximal (op 1), into one
 * row; then out(i) += weight · dh[i] · dwx ⊙ that row (dh NULL: weight alone), and, when `with`
 * is given, Σ with(i) ⊙ that row is returned. The window row stays in L1; no full-size result is
 * written. */
static double col_accumulate(Tile *t, int r, int op, float weight, const float *dh, float *out, const float *with) {
    size_t line = (size_t)t->w * t->len;
    float *restrict win = t->win;
    const float *restrict dwx = t->dwx;
    double total = 0.0;
    int k = 2 * r + 1, blocks = op && col_blocks_pay(t->h, r), top = -1; /* top: the prefix's last row */
    float *restrict pre = t->vec + line; /* hi's prefix in its block */
    if (blocks) col_suffixes(t, k, 0);
    for (int i = 0; i < t->h; i++) {
        int lo = i - r < 0 ? 0 : i - r, hi = i + r > t->h - 1 ? t->h - 1 : i + r;
        const float *wr = win; /* the window row: win, or a prefix or suffix row as it stands */
        if (blocks) {
            for (; top < hi; top++) {
                if ((top + 1) % k == 0) memcpy(pre, ROW(t, t->rows, top + 1), line * sizeof(float));
                else max_(pre, ROW(t, t->rows, top + 1), line);
            }
            const float *restrict suf = ROW(t, t->suf, lo);
            if (lo % k == 0) wr = pre;
            else if (hi / k == lo / k) wr = suf;
            else for (size_t e = 0; e < line; e++) win[e] = fmax_nan(suf[e], pre[e]);
        } else if (op) {
            memcpy(win, ROW(t, t->rows, lo), line * sizeof(float));
            for (int ii = lo + 1; ii <= hi; ii++) max_(win, ROW(t, t->rows, ii), line);
        } else if (i == 0) {
            memcpy(win, ROW(t, t->rows, 0), line * sizeof(float));
            for (int ii = 1; ii <= hi; ii++) add_(win, ROW(t, t->rows, ii), line);
        } else {
            if (i + r <= t->h - 1) add_(win, ROW(t, t->rows, i + r), line);
            if (i - r - 1 >= 0) {
                const float *restrict gone = ROW(t, t->rows, i - r - 1);
                for (size_t e = 0; e < line; e++) win[e] -= gone[e];
            }
        }
        float *restrict o = ROW(t, out, i);
        if (dh) {
            float rowc = weight * dh[i];
            for (size_t e = 0; e < line; e++) o[e] += rowc * dwx[e] * wr[e];
        } else {
            for (size_t e = 0; e < line; e++) o[e] += weight * wr[e];
        }
        if (with) {
            const float *restrict wi = ROW(t, with, i);
            float sum = 0.f;
#pragma omp simd reduction(+ : sum)
            for (size_t e = 0; e < line; e++) sum += wi[e] * wr[e];
            total += sum;
        }
    }
    return total;
}

/* t->dwx = dw[j] at every (j, c) of a row. */
static void expand_columns(Tile *t, const float *dw) {
    for (int j = 0; j < t->w; j++)
        for (int c = 0; c < t->len; c++) t->dwx[(size_t)j * t->len + c] = dw[j];
}

/* 1 / (pixels of the clipped window) along one axis, or 1/k for count_include_pad (k² split). */
static void divisors(int n, int r, int k, float *out) {
    for (int i = 0; i < n; i++) {
        int lo = i - r < 0 ? 0 : i - r, hi = i + r > n - 1 ? n - 1 : i + r;
        out[i] = k ? 1.f / (float)k : 1.f / (float)(hi - lo + 1);
    }
}

/* The identity and the gates: out = S ⊙ src, one row of S at a time. */
static void apply_scale(Tile *t, const Plan *p, const float *weights, const float *const *factors, int64_t ni, int64_t c0,
                        const Shape *sh, const float *src, float *out) {
    int h = t->h, w = t->w, len = t->len, first_gate = p->has_id + p->n_avg + p->n_max;
    size_t line = (size_t)w * len;
    if (!p->has_id && p->n_gate == 0) { /* pooling alone: S = 0 */
        memset(out, 0, (size_t)h * line * sizeof(float));
        return;
    }
    float *restrict base = t->vec, *restrict srow = t->vec + line;
    for (int c = 0; c < len; c++) base[c] = p->has_id ? weights[0] : 0.f;
    for (int g = 0; g < p->n_gate; g++) {
        if (p->has_b[g]) continue;
        const float *s = factors[2 * g] + ni * sh->c + c0;
        float v = weights[first_gate + g];
        for (int c = 0; c < len; c++) base[c] += v * s[c];
    }
    for (int j = 1; j < w; j++) memcpy(base + (size_t)j * len, base, (size_t)len * sizeof(float));
    for (int i = 0; i < h; i++) {
        memcpy(srow, base, line * sizeof(float));
        for (int g = 0; g < p->n_gate; g++) {
            if (!p->has_b[g]) continue;
            const float *restrict a = factors[2 * g] + (ni * sh->h + i) * sh->c + c0;
            float v = weights[first_gate + g];
            for (int j = 0; j < w; j++) {
                const float *restrict b = factors[2 * g + 1] + (ni * sh->w + j) * sh->c + c0;
                float *restrict o = srow + (size_t)j * len;
                for (int c = 0; c < len; c++) o[c] += v * a[c] * b[c];
            }
        }
        float *restrict o = ROW(t, out, i);
        const float *restrict x = ROW(t, src, i);
        for (size_t e = 0; e < line; e++) o[e] = srow[e] * x[e];
    }
}

static double dot(const Tile *t, const float *restrict a, const float *restrict b) {
    double total = 0.0;
    size_t line = (size_t)t->w * t->len;
    for (int i = 0; i < t->h; i++) {
        float s = 0.f;
#pragma omp simd reduction(+ : s)
        for (size_t e = 0; e < line; e++) s += a[(size_t)i * line + e] * b[(size_t)i * line + e];
        total += s;
    }
    return total;
}

static Shape read_shape(const int64_t *geom) {
    Shape s = {geom[0], geom[1], geom[2], geom[3]};
    return s;
}

static Strides read_strides(const int64_t *geom, int which) {
    Strides s = {geom[4 + 3 * which], geom[5 + 3 * which], geom[6 + 3 * which]};
    return s;
}

static float *make_divisors(const Plan *p, const Shape *s, int axis) {
    int n = (int)(axis ? s->w : s->h);
    float *out = malloc(sizeof(float) * (size_t)(p->n_avg * n + 1));
    if (out)
        for (int a = 0; a < p->n_avg; a++) divisors(n, (int)p->avg[3 * a + axis], (int)p->avg[3 * a + 2], out + (size_t)a * n);
    return out;
}

/* A plan without pooling (a child's gate op, x · a_h · a_w; the identity) needs no tile: one pass
 * along each map row, all channels at once. S(i, j, c) into s (c floats): the general form, for
 * plans of two or more gates; pointwise_apply does the usual ones in one loop. */
static void pointwise_scale(const Plan *p, const float *weights, const float *const *factors, const Shape *sh, int64_t ni, int64_t i,
                            int64_t j, float *restrict s) {
    int64_t c = sh->c;
    int first_gate = p->has_id + p->n_avg + p->n_max;
    float base = p->has_id ? weights[0] : 0.f;
    for (int64_t k = 0; k < c; k++) s[k] = base;
    for (int g = 0; g < p->n_gate; g++) {
        float v = weights[first_gate + g];
        const float *restrict a = p->has_b[g] ? factors[2 * g] + (ni * sh->h + i) * c : factors[2 * g] + ni * c;
        if (p->has_b[g]) {
            const float *restrict b = factors[2 * g + 1] + (ni * sh->w + j) * c;
            for (int64_t k = 0; k < c; k++) s[k] += v * a[k] * b[k];
        } else {
            for (int64_t k = 0; k < c; k++) s[k] += v * a[k];
        }
    }
}

/* out = S(i, j) ⊙ v over the c channels of pixel (i, j): the forward (v = x) and ∂x (v = g). With
 * at most one gate, S is formed in the same loop, in pointwise_scale's order of operations (the
 * same bits); a separate pass over an S buffer made the forward 2-3× slower than a plain product
 * of two maps, on the S buffer's extra loads and stores. s: scratch of c floats for the general form. */
static void pointwise_apply(const Plan *p, const float *weights, const float *const *factors, const Shape *sh, int64_t ni, int64_t i,
                            int64_t j, const float *restrict v, float *restrict out, float *restrict s) {
    int64_t c = sh->c;
    float base = p->has_id ? weights[0] : 0.f;
    if (p->n_gate == 0) {
        for (int64_t k = 0; k < c; k++) out[k] = base * v[k];
        return;
    }
    if (p->n_gate == 1) {
        float gv = weights[p->has_id + p->n_avg + p->n_max];
        const float *restrict a = p->has_b[0] ? factors[0] + (ni * sh->h + i) * c : factors[0] + ni * c;
        if (p->has_b[0]) {
            const float *restrict b = factors[1] + (ni * sh->w + j) * c;
            for (int64_t k = 0; k < c; k++) out[k] = (base + gv * a[k] * b[k]) * v[k];
        } else {
            for (int64_t k = 0; k < c; k++) out[k] = (base + gv * a[k]) * v[k];
        }
        return;
    }
    pointwise_scale(p, weights, factors, sh, ni, i, j, s);
    for (int64_t k = 0; k < c; k++) out[k] = s[k] * v[k];
}

static int pointwise_forward(const float *x, float *y, const Plan *p, const float *weights, const float *const *factors, const Shape *sh,
                             Strides xs, Strides ys, int threads) {
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *s = malloc(sizeof(float) * (size_t)sh->c);
        failed |= !s;
#pragma omp for schedule(static)
        for (int64_t q = 0; q < sh->n * sh->h; q++) {
            if (!s) continue;
            int64_t ni = q / sh->h, i = q % sh->h;
            for (int64_t j = 0; j < sh->w; j++)
                pointwise_apply(p, weights, factors, sh, ni, i, j, x + ni * xs.sn + i * xs.sh + j * xs.sw, y + ni * ys.sn + i * ys.sh + j * ys.sw, s);
        }
        free(s);
    }
    return failed;
}

/* One sample per iteration (the gradients of B sum over its rows); gw_tiles row ni * blocks. */
static int pointwise_backward(const float *x, const float *g, float *gx, const Plan *p, const float *weights, const float *const *factors,
                              float *const *gfactors, double *gw_tiles, int64_t blocks, const Shape *sh, Strides xs, Strides gs, Strides gxs,
                              int threads) {
    int64_t c = sh->c;
    int first_gate = p->has_id + p->n_avg + p->n_max, failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        /* s, q, then per gate: its row sums (c) and column sums (w · c) */
        size_t per_gate = (size_t)(1 + sh->w) * c;
        float *buf = malloc(sizeof(float) * ((size_t)2 * c + (size_t)p->n_gate * per_gate));
        failed |= !buf;
#pragma omp for schedule(static)
        for (int64_t ni = 0; ni < sh->n; ni++) {
            if (!buf) continue;
            float *restrict s = buf, *restrict qv = buf + c;
            double *gw = gw_tiles + ni * blocks * p->n_weights;
            memset(buf + 2 * c, 0, sizeof(float) * (size_t)p->n_gate * per_gate);
            double id_total = 0.0;
            for (int64_t i = 0; i < sh->h; i++) {
                for (int gi = 0; gi < p->n_gate; gi++)
                    if (p->has_b[gi]) memset(buf + 2 * c + gi * per_gate, 0, sizeof(float) * (size_t)c);
                for (int64_t j = 0; j < sh->w; j++) {
                    const float *restrict xr = x + ni * xs.sn + i * xs.sh + j * xs.sw, *restrict gr = g + ni * gs.sn + i * gs.sh + j * gs.sw;
                    float qsum = 0.f;
#pragma omp simd reduction(+ : qsum)
                    for (int64_t k = 0; k < c; k++) { qv[k] = gr[k] * xr[k]; qsum += qv[k]; }
                    id_total += qsum;
                    if (gx) pointwise_apply(p, weights, factors, sh, ni, i, j, gr, gx + ni * gxs.sn + i * gxs.sh + j * gxs.sw, s);
                    for (int gi = 0; gi < p->n_gate; gi++) {
                        float *restrict rows = buf + 2 * c + gi * per_gate, *restrict cols = rows + c + j * c;
                        if (!p->has_b[gi]) { for (int64_t k = 0; k < c; k++) rows[k] += qv[k]; continue; }
                        const float *restrict a = factors[2 * gi] + (ni * sh->h + i) * c, *restrict b = factors[2 * gi + 1] + (ni * sh->w + j) * c;
                        for (int64_t k = 0; k < c; k++) { rows[k] += qv[k] * b[k]; cols[k] += qv[k] * a[k]; }
                    }
                }
                for (int gi = 0; gi < p->n_gate; gi++) {
                    if (!p->has_b[gi]) continue;
                    const float *rows = buf + 2 * c + gi * per_gate, *a = factors[2 * gi] + (ni * sh->h + i) * c;
                    float v = weights[first_gate + gi], total = 0.f;
                    for (int64_t k = 0; k < c; k++) total += a[k] * rows[k];
                    gw[first_gate + gi] += total;
                    if (gfactors[2 * gi])
                        for (int64_t k = 0; k < c; k++) gfactors[2 * gi][(ni * sh->h + i) * c + k] = v * rows[k];
                }
            }
            if (p->has_id) gw[0] = id_total;
            for (int gi = 0; gi < p->n_gate; gi++) {
                const float *rows = buf + 2 * c + gi * per_gate, *cols = rows + c;
                float v = weights[first_gate + gi];
                if (!p->has_b[gi]) {
                    const float *sv = factors[2 * gi] + ni * c;
                    double total = 0.0;
                    for (int64_t k = 0; k < c; k++) total += (double)sv[k] * rows[k];
                    gw[first_gate + gi] = total;
                    if (gfactors[2 * gi])
                        for (int64_t k = 0; k < c; k++) gfactors[2 * gi][ni * c + k] = v * rows[k];
                } else if (gfactors[2 * gi + 1]) {
                    for (int64_t k = 0; k < sh->w * c; k++) gfactors[2 * gi + 1][ni * sh->w * c + k] = v * cols[k];
                }
            }
        }
        free(buf);
    }
    return failed;
}

int rf_mix_forward(const float *x, float *y, const int64_t *geom, const int64_t *plan_data, const float *weights,
                   const float *const *factors, int cb, int threads) {
    Plan p = read_plan(plan_data);
    Shape sh = read_shape(geom);
    Strides xs = read_strides(geom, 0), ys = read_strides(geom, 1);
    if (p.n_avg == 0 && p.n_max == 0) return pointwise_forward(x, y, &p, weights, factors, &sh, xs, ys, threads);
    int64_t blocks = (sh.c + cb - 1) / cb, tiles = sh.n * blocks;
    float *divh = make_divisors(&p, &sh, 0), *divw = make_divisors(&p, &sh, 1);
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        Tile t;
        int ok = tile_init(&t, (int)sh.h, (int)sh.w, cb) && divh && divw;
        failed |= !ok;
#pragma omp for schedule(static)
        for (int64_t q = 0; q < tiles; q++) {
            if (!ok) continue;
            int64_t ni = q / blocks, c0 = (q % blocks) * cb;
            tile_start(&t, (int)(sh.c - c0 < cb ? sh.c - c0 : cb));
            float *own_x = t.x, *own_acc = t.acc;
            int whole = t.len == sh.c;
            if (whole && same_layout(&t, xs)) t.x = (float *)(x + ni * xs.sn); /* read only */
            else load(&t, x + ni * xs.sn + c0, xs, t.x);
            if (whole && same_layout(&t, ys)) t.acc = y + ni * ys.sn;
            apply_scale(&t, &p, weights, factors, ni, c0, &sh, t.x, t.acc);
            int wi = p.has_id, rw_done = 0;
            for (int a = 0; a < p.n_avg; a++, wi++) {
                int rh = (int)p.avg[3 * a], rw = (int)p.avg[3 * a + 1];
                row_windows(&t, t.x, rw >= rw_done ? rw_done : 0, rw, 0);
                rw_done = rw;
                expand_columns(&t, divw + (size_t)a * sh.w);
                col_accumulate(&t, rh, 0, weights[wi], divh + (size_t)a * sh.h, t.acc, NULL);
            }
            rw_done = 0;
            for (int m = 0; m < p.n_max; m++, wi++) {
                int rh = (int)p.max[2 * m], rw = (int)p.max[2 * m + 1];
                row_windows(&t, t.x, rw >= rw_done ? rw_done : 0, rw, 1);
                rw_done = rw;
                col_accumulate(&t, rh, 1, weights[wi], NULL, t.acc, NULL);
            }
            if (t.acc == own_acc) store(&t, t.acc, y + ni * ys.sn + c0, ys);
            t.x = own_x; t.acc = own_acc;
        }
        tile_free(&t);
    }
    free(divh); free(divw);
    return failed;
}

/* best ⊕= a later row v (a later value wins only when larger or NaN), at = base + col where it wins. */
static void merge_later_row(float *restrict best, int32_t *restrict at, const float *restrict v, const int32_t *restrict col, int32_t base, size_t n) {
    for (size_t e = 0; e < n; e++) {
        int take = (v[e] > best[e]) | (v[e] != v[e]);
        best[e] = take ? v[e] : best[e];
        at[e] = take ? base + col[e] : at[e];
    }
}

/* best and at: rows lo..hi of the row windows merged from row i outwards (the direct way). */
static void route_rows_direct(Tile *t, int i, int lo, int hi, float *restrict best, int32_t *restrict at) {
    size_t line = (size_t)t->w * t->len;
    memcpy(best, ROW(t, t->rows, i), line * sizeof(float));
    const int32_t *restrict c0 = t->col + (size_t)i * line;
    for (size_t e = 0; e < line; e++) at[e] = (int32_t)(i * line) + c0[e];
    for (int r = i - 1; r >= lo; r--) { /* farther up is earlier: wins ties */
        const float *restrict v = ROW(t, t->rows, r);
        const int32_t *restrict col = t->col + (size_t)r * line;
        for (size_t e = 0; e < line; e++) {
            int take = ((v[e] >= best[e]) | (v[e] != v[e])) & (best[e] == best[e]);
            best[e] = take ? v[e] : best[e];
            at[e] = take ? (int32_t)(r * line) + col[e] : at[e];
        }
    }
    for (int r = i + 1; r <= hi; r++) /* farther down is later: must be larger */
        merge_later_row(best, at, ROW(t, t->rows, r), t->col + (size_t)r * line, (int32_t)(r * line), line);
}

/* Route weight · g to each window's first maximum of x, or its last NaN, in row-major order
 * (MaxPool2d's rule: it scans the window taking a value that is larger or NaN) and return Σ g · max.
 * The row-window state (t->rows, t->col) grows from radius r0, which the previous call left.
 * The row pass keeps, per pixel and channel, the column of its row window's winner: a candidate
 * left of the best wins ties and is a NaN that wins unless the best is one already; one right of
 * it must be larger or NaN. The column pass does the same with rows (rows above are earlier). */
static double max_route(Tile *t, int r0, int rh, int rw, float weight) {
    int h = t->h, w = t->w, len = t->len;
    size_t line = (size_t)w * len;
    for (int i = 0; i < h; i++) {
        const float *restrict x = ROW(t, t->x, i);
        float *restrict v = ROW(t, t->rows, i);
        int32_t *restrict col = t->col + (size_t)i * line;
        const int32_t *restrict jidx = t->jidx;
        if (r0 == 0) {
            memcpy(v, x, line * sizeof(float));
            memcpy(col, jidx, line * sizeof(int32_t));
        }
        for (int d = r0 + 1; d <= rw && d < w; d++) {
            size_t shift = (size_t)d * len;
            for (size_t e = shift; e < line; e++) {
                float cand = x[e - shift];
                int take = ((cand >= v[e]) | (cand != cand)) & (v[e] == v[e]);
                v[e] = take ? cand : v[e];
                col[e] = take ? jidx[e] - (int32_t)shift : col[e];
            }
            for (size_t e = 0; e + shift < line; e++) {
                float cand = x[e + shift];
                int take = (cand > v[e]) | (cand != cand);
                v[e] = take ? cand : v[e];
                col[e] = take ? jidx[e] + (int32_t)shift : col[e];
            }
        }
    }
    double total = 0.0;
    float *restrict best = t->vec, *restrict pre = t->vec + line;
    int32_t *restrict at = (int32_t *)t->tmp, *restrict pre_at = at + line; /* winners' offsets: row · line + column · len */
    int k = 2 * rh + 1, blocks = col_blocks_pay(h, rh), top = -1;
    if (blocks) col_suffixes(t, k, 1);
    for (int i = 0; i < h; i++) {
        int lo = i - rh < 0 ? 0 : i - rh, hi = i + rh > h - 1 ? h - 1 : i + rh;
        const float *bv = best; /* the winners: best and at, or a prefix or suffix as it stands */
        const int32_t *ba = at;
        if (blocks) {
            for (; top < hi; top++) {
                const float *restrict v = ROW(t, t->rows, top + 1);
                const int32_t *restrict col = t->col + (size_t)(top + 1) * line;
                int32_t base = (int32_t)((top + 1) * line);
                if ((top + 1) % k == 0) {
                    memcpy(pre, v, line * sizeof(float));
                    for (size_t e = 0; e < line; e++) pre_at[e] = base + col[e];
                } else {
                    merge_later_row(pre, pre_at, v, col, base, line);
                }
            }
            const float *restrict sv = ROW(t, t->suf, lo);
            const int32_t *restrict sa = t->suf_at + (size_t)lo * line;
            if (lo % k == 0) { bv = pre; ba = pre_at; }
            else if (hi / k == lo / k) { bv = sv; ba = sa; }
            else
                for (size_t e = 0; e < line; e++) {
                    int take = (pre[e] > sv[e]) | (pre[e] != pre[e]);
                    best[e] = take ? pre[e] : sv[e];
                    at[e] = take ? pre_at[e] : sa[e];
                }
        } else {
            route_rows_direct(t, i, lo, hi, best, at);
        }
        const float *restrict g = ROW(t, t->g, i);
        float s = 0.f;
#pragma omp simd reduction(+ : s)
        for (size_t e = 0; e < line; e++) s += g[e] * bv[e];
        total += s;
        /* lanes of one pixel are distinct channels, so distinct targets: a vector scatter */
        for (int j = 0; j < w; j++) {
            const int32_t *restrict aj = ba + (size_t)j * len;
            const float *restrict gj = g + (size_t)j * len;
            float *restrict acc = t->acc;
#pragma omp simd
            for (int c = 0; c < len; c++) acc[aj[c] + c] += weight * gj[c];
        }
    }
    return total;
}

/* The gates' gradients from q = g ⊙ x: ∂A(i,c) = v Σ_j q B, ∂B(j,c) = v Σ_i q A, ∂s(c) = v Σ q;
 * the weight's is ⟨gate, q⟩. */
static void gate_grads(Tile *t, const Plan *p, const float *weights, const float *const *factors, float *const *gfactors,
                       int64_t ni, int64_t c0, const Shape *sh, double *gw) {
    int h = t->h, w = t->w, len = t->len, first_gate = p->has_id + p->n_avg + p->n_max;
    float *restrict sum = t->vec;
    for (int g = 0; g < p->n_gate; g++) {
        float v = weights[first_gate + g];
        double total = 0.0;
        if (!p->has_b[g]) {
            for (int c = 0; c < len; c++) sum[c] = 0.f;
            for (int e = 0; e < h * w; e++) {
                const float *restrict x = t->x + (size_t)e * len, *restrict gr = t->g + (size_t)e * len; /* pixels are len apart */
                for (int c = 0; c < len; c++) sum[c] += gr[c] * x[c];
            }
            const float *s = factors[2 * g] + ni * sh->c + c0;
            float *ds = gfactors[2 * g] ? gfactors[2 * g] + ni * sh->c + c0 : NULL;
            for (int c = 0; c < len; c++) {
                total += (double)s[c] * sum[c];
                if (ds) ds[c] = v * sum[c];
            }
            gw[first_gate + g] = total;
            continue;
        }
        /* rows: Σ_j q B into sum (per row), then ∂A; columns: Σ_i q A accumulated in tmp */
        float *restrict colsum = t->tmp;
        memset(colsum, 0, (size_t)w * t->cb * sizeof(float));
        for (int i = 0; i < h; i++) {
            const float *restrict a = factors[2 * g] + (ni * sh->h + i) * sh->c + c0;
            for (int c = 0; c < len; c++) sum[c] = 0.f;
            for (int j = 0; j < w; j++) {
                const float *restrict b = factors[2 * g + 1] + (ni * sh->w + j) * sh->c + c0;
                const float *restrict x = PIX(t, t->x, i, j), *restrict gr = PIX(t, t->g, i, j);
                float *restrict cs = colsum + (size_t)j * t->cb;
                for (int c = 0; c < len; c++) {
                    float q = gr[c] * x[c];
                    sum[c] += q * b[c];
                    cs[c] += q * a[c];
                }
            }
            float row_total = 0.f;
            for (int c = 0; c < len; c++) row_total += a[c] * sum[c];
            total += row_total;
            if (gfactors[2 * g]) {
                float *da = gfactors[2 * g] + (ni * sh->h + i) * sh->c + c0;
                for (int c = 0; c < len; c++) da[c] = v * sum[c];
            }
        }
        if (gfactors[2 * g + 1])
            for (int j = 0; j < w; j++) {
                float *db = gfactors[2 * g + 1] + (ni * sh->w + j) * sh->c + c0;
                for (int c = 0; c < len; c++) db[c] = v * colsum[(size_t)j * t->cb + c];
            }
        gw[first_gate + g] = total;
    }
}

/* gx (if not NULL) = ∂x; gw_tiles[tile * n_weights + k] = the tile's share of ∂w_k; gate factor
 * gradients into gfactors (pixel-major like the factors) where not NULL. */
int rf_mix_backward(const float *x, const float *g, float *gx, const int64_t *geom, const int64_t *plan_data,
                    const float *weights, const float *const *factors, float *const *gfactors, double *gw_tiles, int cb, int threads) {
    Plan p = read_plan(plan_data);
    Shape sh = read_shape(geom);
    Strides xs = read_strides(geom, 0), gs = read_strides(geom, 1), gxs = read_strides(geom, 2);
    int64_t blocks = (sh.c + cb - 1) / cb, tiles = sh.n * blocks;
    if (p.n_avg == 0 && p.n_max == 0)
        return pointwise_backward(x, g, gx, &p, weights, factors, gfactors, gw_tiles, blocks, &sh, xs, gs, gxs, threads);
    float *divh = make_divisors(&p, &sh, 0), *divw = make_divisors(&p, &sh, 1);
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        Tile t;
        int ok = tile_init(&t, (int)sh.h, (int)sh.w, cb) && divh && divw;
        failed |= !ok;
#pragma omp for schedule(static)
        for (int64_t q = 0; q < tiles; q++) {
            if (!ok) continue;
            int64_t ni = q / blocks, c0 = (q % blocks) * cb;
            double *gw = gw_tiles + q * p.n_weights;
            tile_start(&t, (int)(sh.c - c0 < cb ? sh.c - c0 : cb));
            float *own_x = t.x, *own_g = t.g, *own_acc = t.acc;
            int whole = t.len == sh.c;
            if (whole && same_layout(&t, xs)) t.x = (float *)(x + ni * xs.sn); /* read only */
            else load(&t, x + ni * xs.sn + c0, xs, t.x);
            if (whole && same_layout(&t, gs)) t.g = (float *)(g + ni * gs.sn);
            else load(&t, g + ni * gs.sn + c0, gs, t.g);
            if (gx && whole && same_layout(&t, gxs)) t.acc = gx + ni * gxs.sn;
            apply_scale(&t, &p, weights, factors, ni, c0, &sh, t.g, t.acc); /* ∂x of identity and gates */
            if (p.has_id) gw[0] = dot(&t, t.g, t.x);
            gate_grads(&t, &p, weights, factors, gfactors, ni, c0, &sh, gw);
            int wi = p.has_id;
            /* average pooling: ∂x = box(D ⊙ g) (clipped box sums are symmetric), ∂w = ⟨that, x⟩ */
            for (int a = 0; a < p.n_avg; a++, wi++) {
                int rh = (int)p.avg[3 * a], rw = (int)p.avg[3 * a + 1];
                const float *dh = divh + (size_t)a * sh.h, *dw = divw + (size_t)a * sh.w;
                expand_columns(&t, dw);
                for (int i = 0; i < t.h; i++) {
                    const float *restrict gr = ROW(&t, t.g, i);
                    float *restrict o = ROW(&t, t.tmp, i);
                    for (size_t e = 0; e < (size_t)t.w * t.len; e++) o[e] = dh[i] * t.dwx[e] * gr[e];
                }
                row_windows(&t, t.tmp, 0, rw, 0);
                gw[wi] = col_accumulate(&t, rh, 0, weights[wi], NULL, t.acc, t.x);
            }
            for (int m = 0, rw_done = 0; m < p.n_max; m++, wi++) {
                int rh = (int)p.max[2 * m], rw = (int)p.max[2 * m + 1];
                gw[wi] = max_route(&t, rw >= rw_done ? rw_done : 0, rh, rw, weights[wi]);
                rw_done = rw;
            }
            if (gx && t.acc == own_acc) store(&t, t.acc, gx + ni * gxs.sn + c0, gxs);
            t.x = own_x; t.g = own_g; t.acc = own_acc;
        }
        tile_free(&t);
    }
    free(divh); free(divw);
    return failed;
}

/* The separable global op's profiles, p (n, h + w, c) pixel-major: rows 0..h-1 the means over
 * each map row (along W), rows h..h+w-1 the means over each column (along H); one read of x. geom:
 * n, c, h, w, then x's (sn, sh, sw). Tiles are (sample, block of cb channels). */
int rf_profiles_forward(const float *x, float *p, const int64_t *geom, int cb, int threads) {
    Shape sh = read_shape(geom);
    Strides xs = read_strides(geom, 0);
    int64_t blocks = (sh.c + cb - 1) / cb, tiles = sh.n * blocks, rows = sh.h + sh.w;
    float inv_w = 1.f / (float)sh.w, inv_h = 1.f / (float)sh.h;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t q = 0; q < tiles; q++) {
        int64_t ni = q / blocks, c0 = (q % blocks) * cb;
        int len = (int)(sh.c - c0 < cb ? sh.c - c0 : cb);
        float *ph = p + ni * rows * sh.c + c0, *pw = ph + sh.h * sh.c;
        for (int64_t j = 0; j < sh.w; j++) memset(pw + j * sh.c, 0, (size_t)len * sizeof(float));
        for (int64_t i = 0; i < sh.h; i++) {
            float *restrict r = ph + i * sh.c;
            memset(r, 0, (size_t)len * sizeof(float));
            for (int64_t j = 0; j < sh.w; j++) {
                const float *restrict v = x + ni * xs.sn + i * xs.sh + j * xs.sw + c0;
                float *restrict col = pw + j * sh.c;
                for (int c = 0; c < len; c++) { r[c] += v[c]; col[c] += v[c]; }
            }
            for (int c = 0; c < len; c++) r[c] *= inv_w;
        }
        for (int64_t j = 0; j < sh.w; j++)
            for (int c = 0; c < len; c++) pw[j * sh.c + c] *= inv_h;
    }
    return 0; /* no buffers to allocate: a status like the other entry points */
}

/* Its gradient: gx(i, j, c) = gp(i, c) / w + gp(h + j, c) / h, written in gx's strides (geom: n, c,
 * h, w, then gx's (sn, sh, sw)); the divisions as autograd's mean backward makes them. */
int rf_profiles_backward(const float *gp, float *gx, const int64_t *geom, int cb, int threads) {
    Shape sh = read_shape(geom);
    Strides gs = read_strides(geom, 0);
    int64_t blocks = (sh.c + cb - 1) / cb, tiles = sh.n * blocks, rows = sh.h + sh.w;
    float fw = (float)sh.w, fh = (float)sh.h;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *scaled = malloc(sizeof(float) * (size_t)rows * cb);
        failed |= !scaled;
#pragma omp for schedule(static)
        for (int64_t q = 0; q < tiles; q++) {
            if (!scaled) continue;
            int64_t ni = q / blocks, c0 = (q % blocks) * cb;
            int len = (int)(sh.c - c0 < cb ? sh.c - c0 : cb);
            const float *src = gp + ni * rows * sh.c + c0;
            for (int64_t r = 0; r < rows; r++)
                for (int c = 0; c < len; c++) scaled[r * cb + c] = src[r * sh.c + c] / (r < sh.h ? fw : fh);
            for (int64_t i = 0; i < sh.h; i++)
                for (int64_t j = 0; j < sh.w; j++) {
                    const float *restrict a = scaled + i * cb, *restrict b = scaled + (sh.h + j) * cb;
                    float *restrict o = gx + ni * gs.sn + i * gs.sh + j * gs.sw + c0;
                    for (int c = 0; c < len; c++) o[c] = a[c] + b[c];
                }
        }
        free(scaled);
    }
    return failed;
}
