/* Compiled CPU kernels for the sparse passes of a training step (see native.py).
 *
 * Plain C99, float32 values and int64 indices, row-major contiguous arrays. Every function works
 * on the half-open range [r0, r1) of its output rows, so that Python can split the rows over
 * threads (ctypes releases the GIL). Functions that need scratch memory (a few rows) return 0,
 * or SC_NO_MEMORY when it cannot be allocated (nothing is written then).
 * Sums run in a fixed order (the order of the entries), so the results do not depend on the
 * number of threads. Dot products keep 64 partial sums (AVX2 + FMA) or SC_LANES (elsewhere, which
 * the compiler vectorises without reassociating anything: no -ffast-math).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#if defined(__AVX__)
#include <immintrin.h>
#endif

#define SC_LANES 16
#define SC_NO_MEMORY 1 /* returned when a scratch buffer cannot be allocated */
#define SC_BAD_INDEX 2 /* returned when an index is out of range */
/* how many entries ahead the gathers prefetch their source rows */
#ifndef SC_AHEAD
#define SC_AHEAD 16
#endif

/* ------------------------------------------------------------------ top-k per row */

/* The k-th largest (1 <= k <= m) of a[0..m); a is reordered and tmp (m floats) is scratch.
 * Quickselect whose three-way partition has no data-dependent branch: the entries above the
 * pivot are compacted in place, those below go to the other buffer, and the buffers swap roles
 * when the search continues below. */
static float kth_largest(float *a, float *tmp, int64_t m, int64_t k) {
    int64_t target = k - 1;
    if (k == m) { /* the minimum */
        float lo = a[0];
        for (int64_t i = 1; i < m; i++) lo = a[i] < lo ? a[i] : lo;
        return lo;
    }
    for (;;) {
        float x = a[0], y = a[m / 2], z = a[m - 1];
        float hi = x > y ? x : y, lo = x > y ? y : x;
        float pivot = z > hi ? hi : (z < lo ? lo : z); /* median of three */
        int64_t ng = 0, nl = 0;
        for (int64_t i = 0; i < m; i++) {
            float v = a[i];
            a[ng] = v;
            tmp[nl] = v;
            ng += v > pivot;
            nl += v < pivot;
        }
        if (target < ng) {
            m = ng;
        } else if (target < m - nl) {
            return pivot;
        } else {
            target -= m - nl;
            m = nl;
            float *t = a;
            a = tmp;
            tmp = t;
        }
    }
}

/* Write to (cv, ci) the entries p[j] >= t, j < n, in column order; returns their count. */
static int64_t collect_at_least(const float *p, int64_t n, float t, float *cv, int64_t *ci) {
    int64_t j = 0, c = 0;
#if defined(__AVX__)
    __m256 tv = _mm256_set1_ps(t);
    for (; j + 8 <= n; j += 8) {
        int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p + j), tv, _CMP_GE_OQ));
        while (mask) {
            int b = __builtin_ctz(mask);
            cv[c] = p[j + b];
            ci[c++] = j + b;
            mask &= mask - 1;
        }
    }
#endif
    for (; j < n; j++)
        if (p[j] >= t) {
            cv[c] = p[j];
            ci[c++] = j;
        }
    return c;
}

/* Rows r0..r1-1 of pre [rows, n] (row stride ld): the k largest entries of each row, unsorted,
 * into out_v/out_i [rows, k], with 1 <= k <= n.
 *
 * nb strided blocks (block b holds columns b, b + nb, ...; nb = 0: every column is a block) give
 * a lower bound t0 of the row's k-th largest value: the k-th largest block maximum, since k
 * blocks each hold an entry >= it. The entries >= t0 (a few more than k) are collected, and the
 * k-th largest of them, t, is the row's k-th largest. The output holds the entries > t, then
 * those == t in column order (ties keep the earlier column). A row with NaN gets k valid
 * columns, in an unspecified choice. bias [n] (or NULL) is added to every row first. */
int sc_row_topk(const float *pre, int64_t n, int64_t ld, int64_t k, int64_t nb,
                 const float *bias, int64_t r0, int64_t r1, float *out_v, int64_t *out_i) {
    float *m = (float *)malloc((size_t)n * sizeof(float));
    float *biased = bias ? (float *)malloc((size_t)n * sizeof(float)) : NULL;
    float *cv = (float *)malloc((size_t)n * sizeof(float));
    float *cs = (float *)malloc((size_t)n * sizeof(float));
    int64_t *ci = (int64_t *)malloc((size_t)n * sizeof(int64_t));
    int ok = m && cv && cs && ci && (biased || !bias);
    int64_t s = nb >= k ? n / nb : 0, body = s * nb;
    for (int64_t r = r0; ok && r < r1; r++) {
        const float *p = pre + r * ld;
        int ahead = r + 1 < r1; /* prefetch the next row while this one is read */
        if (bias) {
            for (int64_t j0 = 0; j0 < n; j0 += 16) {
                if (ahead) __builtin_prefetch(p + ld + j0);
                int64_t j1 = j0 + 16 < n ? j0 + 16 : n;
                for (int64_t j = j0; j < j1; j++) biased[j] = p[j] + bias[j];
            }
            p = biased;
            ahead = 0;
        }
        float *ov = out_v + r * k;
        int64_t *oi = out_i + r * k;
        int64_t nm = 0;
        if (s > 0) {
            for (int64_t b = 0; b < nb; b++) m[b] = p[b];
            for (int64_t q = 1; q < s; q++) {
                const float *row = p + q * nb;
                if (ahead)
                    for (int64_t b = 0; b < nb; b += 16) __builtin_prefetch(row + ld + b);
                for (int64_t b = 0; b < nb; b++) m[b] = row[b] > m[b] ? row[b] : m[b];
            }
            nm = nb;
        }
        for (int64_t j = body; j < n; j++) m[nm++] = p[j];
        float t0 = kth_largest(m, cs, nm, k);
        int64_t c = collect_at_least(p, n, t0, cv, ci);
        if (c < k) { /* only with NaN: any k valid columns */
            for (int64_t j = 0; j < k; j++) {
                ov[j] = p[j];
                oi[j] = j;
            }
            continue;
        }
        memcpy(cs, cv, (size_t)c * sizeof(float));
        float t = kth_largest(cs, m, c, k);
        int64_t o = 0;
        for (int64_t j = 0; j < c; j++)
            if (cv[j] > t) {
                ov[o] = cv[j];
                oi[o++] = ci[j];
            }
        for (int64_t j = 0; j < c && o < k; j++)
            if (cv[j] == t) {
                ov[o] = cv[j];
                oi[o++] = ci[j];
            }
    }
    free(m);
    free(biased);
    free(cv);
    free(cs);
    free(ci);
    return ok ? 0 : SC_NO_MEMORY;
}

/* ------------------------------------------------------------------ sampled dot products */

/* <a, b> over d entries: 64 (AVX2 + FMA) or SC_LANES partial sums, then their sum. */
static float dot(const float *restrict a, const float *restrict b, int64_t d) {
    int64_t e = 0;
    float s = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 p[8];
    for (int u = 0; u < 8; u++) p[u] = _mm256_setzero_ps();
    for (; e + 64 <= d; e += 64)
        for (int u = 0; u < 8; u++)
            p[u] = _mm256_fmadd_ps(_mm256_loadu_ps(a + e + 8 * u), _mm256_loadu_ps(b + e + 8 * u), p[u]);
    for (; e + 8 <= d; e += 8) p[0] = _mm256_fmadd_ps(_mm256_loadu_ps(a + e), _mm256_loadu_ps(b + e), p[0]);
    __m256 q = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(p[0], p[1]), _mm256_add_ps(p[2], p[3])),
                             _mm256_add_ps(_mm256_add_ps(p[4], p[5]), _mm256_add_ps(p[6], p[7])));
    float lanes[8];
    _mm256_storeu_ps(lanes, q);
    for (int u = 0; u < 8; u++) s += lanes[u];
#else
    float part[SC_LANES] = {0};
    for (; e + SC_LANES <= d; e += SC_LANES)
        for (int t = 0; t < SC_LANES; t++) part[t] += a[e + t] * b[e + t];
    for (int t = 0; t < SC_LANES; t++) s += part[t];
#endif
    for (; e < d; e++) s += a[e] * b[e];
    return s;
}

/* Rows r0..r1-1 of out [rows, k]: out[r, j] = <g[r], W[idx[r, j]]> (g [rows, d], W [n, d]). */
void sc_sampled_dots(const int64_t *idx, int64_t k, const float *g, const float *W, int64_t d,
                     float *out, int64_t r0, int64_t r1) {
    int64_t line = 64 / (int64_t)sizeof(float);
    for (int64_t r = r0; r < r1; r++)
        for (int64_t j = 0; j < k; j++) {
            int64_t a = r * k + j + 2; /* prefetch the row two entries ahead */
            if (a < r1 * k)
                for (int64_t e = 0; e < d; e += line) __builtin_prefetch(W + idx[a] * d + e);
            out[r * k + j] = dot(g + r * d, W + idx[r * k + j] * d, d);
        }
}


/* ------------------------------------------------------------------ grouping by column */

/* A counting sort of the nnz entries by column (cols[e] in [0, n_cols)): off [n_cols + 1] where
 * each column's run starts (off[n_cols] = nnz), order [nnz] the entries column by column, in
 * increasing entry order within a column. Returns SC_BAD_INDEX (nothing usable written) when a
 * column is out of range. Single-threaded: O(nnz + n_cols). */
int sc_group_by_col(const int64_t *cols, int64_t nnz, int64_t n_cols, int64_t *order,
                    int64_t *off) {
    memset(off, 0, (size_t)(n_cols + 1) * sizeof(int64_t));
    for (int64_t e = 0; e < nnz; e++) {
        if (cols[e] < 0 || cols[e] >= n_cols) return SC_BAD_INDEX;
        off[cols[e] + 1]++;
    }
    for (int64_t c = 0; c < n_cols; c++) off[c + 1] += off[c];
    for (int64_t e = 0; e < nnz; e++) order[off[cols[e]]++] = e; /* off[c] moves to its end */
    for (int64_t c = n_cols; c > 0; c--) off[c] = off[c - 1]; /* shift the ends back to starts */
    off[0] = 0;
    return 0;
}

/* ------------------------------------------------------------------ sums of weighted rows */

/* o[0..d) = sum_{j < m} w[j] * p[j][0..d), summed in the order of j. With AVX2 and FMA, 64
 * columns at a time stay in eight registers while the m rows stream by. */
static void weighted_rows(float *restrict o, const float *const *p, const float *w, int64_t m,
                          int64_t d) {
    int64_t e = 0;
#if defined(__AVX2__) && defined(__FMA__)
    for (; e + 64 <= d; e += 64) {
        __m256 a[8];
        for (int u = 0; u < 8; u++) a[u] = _mm256_setzero_ps();
        for (int64_t j = 0; j < m; j++) {
            if (j + SC_AHEAD < m) {
                const char *next = (const char *)(p[j + SC_AHEAD] + e);
                for (int u = 0; u < 256; u += 64) __builtin_prefetch(next + u);
            }
            const float *row = p[j] + e;
            __m256 v = _mm256_set1_ps(w[j]);
            for (int u = 0; u < 8; u++) a[u] = _mm256_fmadd_ps(v, _mm256_loadu_ps(row + 8 * u), a[u]);
        }
        for (int u = 0; u < 8; u++) _mm256_storeu_ps(o + e + 8 * u, a[u]);
    }
    for (; e + 8 <= d; e += 8) {
        __m256 a = _mm256_setzero_ps();
        for (int64_t j = 0; j < m; j++)
            a = _mm256_fmadd_ps(_mm256_set1_ps(w[j]), _mm256_loadu_ps(p[j] + e), a);
        _mm256_storeu_ps(o + e, a);
    }
#endif
    for (int64_t f = e; f < d; f++) o[f] = 0.0f;
    for (int64_t j = 0; j < m; j++)
        for (int64_t f = e; f < d; f++) o[f] += w[j] * p[j][f];
}

/* The size of the largest group c0..c1-1 (group c: entries off[c] .. off[c+1]-1). */
static int64_t largest_group(const int64_t *off, int64_t c0, int64_t c1) {
    int64_t m = 1;
    for (int64_t c = c0; c < c1; c++) m = off[c + 1] - off[c] > m ? off[c + 1] - off[c] : m;
    return m;
}

/* Group c's rows of src [*, d] and weights: entry e = order[j] for j in [off[c], off[c+1]) lies
 * in row rows[e] (or e / width where rows is NULL) and weighs w[e]. Returns the count. */
static int64_t group_rows(const int64_t *order, const int64_t *rows, int64_t width,
                          const float *w, const int64_t *off, int64_t c, const float *src,
                          int64_t d, const float **p, float *pw) {
    int64_t m = off[c + 1] - off[c];
    for (int64_t j = 0; j < m; j++) {
        int64_t e = order[off[c] + j];
        p[j] = src + (rows ? rows[e] : e / width) * d;
        pw[j] = w ? w[e] : 0.0f;
    }
    return m;
}

#define SC_TBLOCK 16 /* latents per block of the transposed write: one 64-byte line per row */

/* Columns c0..c1-1 of the sum over entries grouped by column (order [nnz]: the entries sorted
 * by column; off [n_cols + 1]; rows [nnz] or NULL with width, see group_rows; w [nnz]):
 * out[c] = sum_{e in group c} w[e] * (src[row(e)] - shift), in the order of the groups' entries
 * (shift [d], or NULL for none; subtracted once per column, as (sum_e w[e]) * shift).
 * transpose = 0: out is [n_cols, d]; 1: out is its transpose [d, n_cols], written a block of
 * SC_TBLOCK columns at a time. */
int sc_sum_rows_by_col(const int64_t *order, const int64_t *rows, int64_t width, const float *w,
                        const int64_t *off, const float *src, const float *shift, int64_t d,
                        float *out, int64_t n_cols, int64_t transpose, int64_t c0, int64_t c1) {
    int64_t big = largest_group(off, c0, c1);
    const float **p = (const float **)malloc((size_t)big * sizeof(float *));
    float *pw = (float *)malloc((size_t)big * sizeof(float));
    float *acc = transpose ? (float *)malloc((size_t)SC_TBLOCK * d * sizeof(float)) : NULL;
    int ok = p && pw && (acc || !transpose);
    for (int64_t b = c0; ok && b < c1; b += SC_TBLOCK) {
        int64_t bn = c1 - b < SC_TBLOCK ? c1 - b : SC_TBLOCK;
        for (int64_t t = 0; t < bn; t++) {
            int64_t m = group_rows(order, rows, width, w, off, b + t, src, d, p, pw);
            float *o = acc ? acc + t * d : out + (b + t) * d;
            weighted_rows(o, p, pw, m, d);
            if (shift) {
                float ws = 0.0f;
                for (int64_t j = 0; j < m; j++) ws += pw[j];
                for (int64_t e = 0; e < d; e++) o[e] -= ws * shift[e];
            }
        }
        if (acc)
            for (int64_t e = 0; e < d; e++)
                for (int64_t t = 0; t < bn; t++) out[e * n_cols + b + t] = acc[t * d + e];
    }
    free(p);
    free(pw);
    free(acc);
    return ok ? 0 : SC_NO_MEMORY;
}

/* The backward of decoding x_hat[r] = sum_j val[r, j] W[idx[r, j]], for latents c0..c1-1, over
 * the entries grouped by latent (order, off as in sc_sum_rows_by_col; entry e is row e / width;
 * g [rows, d] the output gradient): dW[c] = sum_{e in group c} val[e] g[row(e)] (if dW) and
 * dval[e] = <g[row(e)], W[c]> (if dval). One pass over each group's gradient rows. */
int sc_decode_backward(const int64_t *order, int64_t width, const float *val, const int64_t *off,
                        const float *g, const float *W, int64_t d, float *dval, float *dW,
                        int64_t c0, int64_t c1) {
    int64_t big = largest_group(off, c0, c1);
    const float **p = (const float **)malloc((size_t)big * sizeof(float *));
    float *pw = (float *)malloc((size_t)big * sizeof(float));
    int ok = p && pw;
    for (int64_t c = c0; ok && c < c1; c++) {
        int64_t m = group_rows(order, NULL, width, val, off, c, g, d, p, pw);
        if (dW) weighted_rows(dW + c * d, p, pw, m, d);
        if (dval)
            for (int64_t j = 0; j < m; j++) dval[order[off[c] + j]] = dot(p[j], W + c * d, d);
    }
    free(p);
    free(pw);
    return ok ? 0 : SC_NO_MEMORY;
}

/* ------------------------------------------------------------------ per-row updates in place */

/* Rows r0..r1-1 of g, w [rows, d]: g[r] -= (<g[r], w[r]> / max(<w[r], w[r]>, 1e-12)) w[r]. */
void sc_remove_parallel(float *g, const float *w, int64_t d, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
        float *gr = g + r * d;
        const float *wr = w + r * d;
        float ww = dot(wr, wr, d);
        float s = dot(gr, wr, d) / (ww > 1e-12f ? ww : 1e-12f);
        for (int64_t e = 0; e < d; e++) gr[e] -= s * wr[e];
    }
}

/* Rows r0..r1-1 of w [rows, d]: w[r] /= max(|w[r]|, 1e-12). */
void sc_unit_rows(float *w, int64_t d, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
        float *wr = w + r * d;
        float norm = sqrtf(dot(wr, wr, d));
        norm = norm > 1e-12f ? norm : 1e-12f;
        for (int64_t e = 0; e < d; e++) wr[e] /= norm;
    }
}
