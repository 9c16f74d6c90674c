/* TT-Rec's chain of core products for every id, forward and backward, one id at a time.
 *
 * Each id's vector is the product of its K core rows (src/compemb/embeddings/tt.py, tt_lookup
 * and tt_chain). Left to right: P_0 = row 0 as (d_0, r_1); P_j = P_{j-1} (p, r_j) @ row j
 * (r_j, d_j r_{j+1}), read as (p d_j, r_{j+1}); the vector is P_{K-1} (D, 1). Right to left
 * (below) where that takes fewer multiply-adds. torch's batched matmul over N tiny matrices
 * spends most of its time per matrix, and a gather first copies every id's rows (r^2 d floats
 * for a middle core); these loops read each id's rows where they are, keep its partial products
 * in cache, and run 8 floats at a time along contiguous rows. The backward computes the partial
 * products again rather than keeping them (N p r floats each).
 *
 * Core j's table is (rows[j], w_j) row-major, w_j = r_j d_j r_{j+1}; id i reads its row idx[j][i]
 * (the tables hold the rows themselves, in cache when small, so no (n, w_j) copy of gathered
 * rows is made). dims[0..k-1], ranks[0..k] (r_0 = r_k = 1).
 * Every function returns 0, -1 for shapes it does not take, -2 when out of memory, -3 when a row
 * index is out of range (nothing written then).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32)));

/* unaligned loads and stores, as macros: a function passing v8 by value would change its ABI
 * with the target */
#define load8(p) ({ v8 v_; memcpy(&v_, (p), sizeof v_); v_; })
#define store8(p, v) do { v8 v_ = (v); memcpy((p), &v_, sizeof v_); } while (0)

/* One pass over y for the NB 8-column blocks of c's row x from column z: NB independent
 * sums in registers, so that the adds' latency overlaps (a single sum of r terms would wait
 * on each add in turn). */
#define MM_BLOCKS(NB)                                                                   \
    do {                                                                                \
        v8 acc[NB];                                                                     \
        for (int q_ = 0; q_ < NB; q_++) acc[q_] = (v8){0};                              \
        for (int64_t y = 0; y < r; y++) {                                               \
            const float s_ = ax[y * sy];                                                \
            const float *by = b + y * w + z;                                            \
            for (int q_ = 0; q_ < NB; q_++) acc[q_] += s_ * load8(by + 8 * q_);         \
        }                                                                               \
        for (int q_ = 0; q_ < NB; q_++) {                                               \
            if (add) acc[q_] += load8(cx + z + 8 * q_);                                 \
            store8(cx + z + 8 * q_, acc[q_]);                                           \
        }                                                                               \
        z += 8 * NB;                                                                    \
    } while (0)

/* c (p, w) = (or +=, where add) A (p, r) @ b (r, w), A's element (x, y) at a[x sx + y sy].
 * Each output row is built 32 columns at a time in registers, then the last 8 to 24 in one
 * pass, then one at a time. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
static void mm(const float *a, int64_t sx, int64_t sy, const float *restrict b, float *restrict c,
               int64_t p, int64_t r, int64_t w, int add) {
    for (int64_t x = 0; x < p; x++) {
        const float *ax = a + x * sx;
        float *cx = c + x * w;
        int64_t z = 0;
        while (z + 32 <= w) MM_BLOCKS(4);
        switch ((w - z) / 8) {
            case 3: MM_BLOCKS(3); break;
            case 2: MM_BLOCKS(2); break;
            case 1: MM_BLOCKS(1); break;
            default: break;
        }
        for (; z < w; z++) {
            float c0 = 0.0f;
            for (int64_t y = 0; y < r; y++) c0 += ax[y * sy] * b[y * w + z];
            cx[z] = add ? cx[z] + c0 : c0;
        }
    }
}

/* c (p, w) = a (p, r) @ b (r, w), overwriting c. */
static void matmul(const float *a, const float *b, float *c, int64_t p, int64_t r, int64_t w) {
    mm(a, r, 1, b, c, p, r, w, 0);
}

/* Sizes of the partial products: part[j] = p_j r_{j+1} floats, p_j = d_0 ... d_j. */
static int64_t layout(int64_t k, const int64_t *dims, const int64_t *ranks, int64_t *offs,
                      int64_t *width) {
    if (k < 1 || ranks[0] != 1 || ranks[k] != 1) return -1;
    int64_t p = 1, total = 0, widest = 0;
    for (int64_t j = 0; j < k; j++) {
        if (dims[j] < 1 || ranks[j + 1] < 1) return -1;
        p *= dims[j];
        offs[j] = total;
        total += p * ranks[j + 1];
        int64_t w = dims[j] * ranks[j + 1];
        if (ranks[j] * w > widest) widest = ranks[j] * w;
    }
    *width = widest;
    return total;
}

#define MAX_CORES 8

/* Row i of core j: tables[j] row idx[j][i], or row i where idx[j] is NULL. */
#define ROW(j, i) (tables[j] + (idx[j] ? idx[j][i] : (i)) * widths[j])

/* Right to left. With q_j = d_j ... d_{K-1}, Q_j = row j (r_j d_j, r_{j+1}) @ Q_{j+1}
 * (r_{j+1}, q_{j+1}), read as (r_j, q_j); Q_K = (1); the vector is Q_0 (1, D). It is kept
 * transposed, T_j = Q_j^T (q_j, r_j), so that every product runs along contiguous rows of
 * r_{j+1} floats: where the first core's d_0 is larger than the last's, this order takes fewer
 * multiply-adds (D = 16 split 4, 2, 2 at equal ranks r: 4 r^2 + 16 r against 8 r^2 + 16 r). */

static int64_t cost_left(int64_t k, const int64_t *dims, const int64_t *ranks) {
    int64_t p = dims[0], c = 0;
    for (int64_t j = 1; j < k; j++) {
        c += p * ranks[j] * dims[j] * ranks[j + 1];
        p *= dims[j];
    }
    return c;
}

static int64_t cost_right(int64_t k, const int64_t *dims, const int64_t *ranks) {
    int64_t q = dims[k - 1], c = 0;
    for (int64_t j = k - 2; j >= 0; j--) {
        c += ranks[j] * dims[j] * q * ranks[j + 1];
        q *= dims[j];
    }
    return c;
}

/* Offsets of T_1 .. T_K in one buffer (T_K = (1)); returns its size in floats. */
static int64_t layout_right(int64_t k, const int64_t *dims, const int64_t *ranks, int64_t *offs,
                            int64_t *qs) {
    int64_t q = 1, total = 0;
    qs[k] = 1;
    for (int64_t j = k; j >= 1; j--) {
        if (j < k) { q *= dims[j]; qs[j] = q; }
        offs[j] = total;
        total += qs[j] * ranks[j];
    }
    qs[0] = q * dims[0];
    return total;
}

/* t (d q, r) from a core row given transposed, gt (s, r d), and t_next (q, s):
 * m = t_next @ gt (q, r d) is Q's (r d, q) block transposed; t[dd q + z][x] = m[z][x d + dd]. */
static void right_step(const float *gt, const float *t_next, float *t, float *m, int64_t r,
                       int64_t d, int64_t q, int64_t s) {
    mm(t_next, s, 1, gt, m, q, s, r * d, 0);
    for (int64_t z = 0; z < q; z++)
        for (int64_t x = 0; x < r; x++)
            for (int64_t dd = 0; dd < d; dd++) t[(dd * q + z) * r + x] = m[z * r * d + x * d + dd];
}

/* Each core's rows transposed, (r d, s) -> (s, r d): once per call, where a table has fewer
 * rows than the batch has ids (TT's tables are small) it costs less than once per id. */
static float *transposed(int64_t k, const int64_t *dims, const int64_t *ranks,
                         const float *const *tables, const int64_t *rows,
                         const int64_t *const *idx, const int64_t *widths, int64_t n,
                         float **trans) {
    int64_t total = 0;
    for (int64_t j = 0; j < k; j++) total += (idx[j] ? rows[j] : n) * widths[j];
    float *buf = malloc(total * sizeof(float) + 1);
    if (!buf) return NULL;
    float *at = buf;
    for (int64_t j = 0; j < k; j++) {
        int64_t rd = ranks[j] * dims[j], s = ranks[j + 1], count = idx[j] ? rows[j] : n;
        trans[j] = at;
        for (int64_t i = 0; i < count; i++) {
            const float *src = tables[j] + i * widths[j];
            float *dst = at + i * widths[j];
            for (int64_t x = 0; x < rd; x++)
                for (int64_t y = 0; y < s; y++) dst[y * rd + x] = src[x * s + y];
        }
        at += count * widths[j];
    }
    return buf;
}

#define ROWT(j, i) (trans[j] + (idx[j] ? idx[j][i] : (i)) * widths[j])

static int forward_right(int64_t k, const int64_t *dims, const int64_t *ranks,
                         const float *const *tables, const int64_t *rows,
                         const int64_t *const *idx, const int64_t *widths, int64_t n,
                         float *out) {
    int64_t offs[MAX_CORES + 1], qs[MAX_CORES + 1], widest = 0;
    float *trans[MAX_CORES];
    int64_t total = layout_right(k, dims, ranks, offs, qs);
    for (int64_t j = 0; j < k; j++) if (widths[j] > widest) widest = widths[j];
    float *tt = transposed(k, dims, ranks, tables, rows, idx, widths, n, trans);
    float *buf = malloc((total + qs[0] * widest) * sizeof(float));
    if (!buf || !tt) { free(buf); free(tt); return -2; }
    float *m = buf + total;
    buf[offs[k]] = 1.0f;  /* T_K */
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = k - 1; j >= 0; j--)
            right_step(ROWT(j, i), buf + offs[j + 1], j ? buf + offs[j] : out + i * qs[0], m,
                       ranks[j], dims[j], qs[j + 1], ranks[j + 1]);
    free(buf);
    free(tt);
    return 0;
}

static int backward_right(int64_t k, const int64_t *dims, const int64_t *ranks,
                          const float *const *tables, const int64_t *rows,
                          const int64_t *const *idx, const int64_t *widths, const float *g,
                          int64_t n, const uint8_t *dense, float *const *grads) {
    int64_t offs[MAX_CORES + 1], qs[MAX_CORES + 1], widest = 0;
    float *trans[MAX_CORES];
    int64_t total = layout_right(k, dims, ranks, offs, qs);
    for (int64_t j = 0; j < k; j++) if (widths[j] > widest) widest = widths[j];
    float *tt = transposed(k, dims, ranks, tables, rows, idx, widths, n, trans);
    /* T_1 .. T_K; then m, dQ_j and dT_{j+1}, each at most q_0 times a core row's width */
    int64_t scratch = qs[0] * widest;
    float *buf = malloc((total + 3 * scratch) * sizeof(float));
    if (!buf || !tt) { free(buf); free(tt); return -2; }
    float *m = buf + total, *dq_a = m + scratch, *dt = dq_a + scratch;
    buf[offs[k]] = 1.0f;
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = k - 1; j >= 1; j--)
            right_step(ROWT(j, i), buf + offs[j + 1], buf + offs[j], m, ranks[j], dims[j],
                       qs[j + 1], ranks[j + 1]);
        const float *dq = g + i * qs[0];  /* dQ_0 (d_0, q_1) */
        for (int64_t j = 0; j < k; j++) {
            int64_t rd = ranks[j] * dims[j], q = qs[j + 1], s = ranks[j + 1];
            const float *t_next = buf + offs[j + 1];
            if (grads[j]) {  /* d row (r d, s) += dQ_j (r d, q) @ T_{j+1} (q, s) */
                float *gr = grads[j] + (dense[j] && idx[j] ? idx[j][i] : i) * widths[j];
                mm(dq, q, 1, t_next, gr, rd, q, s, dense[j]);
            }
            if (j == k - 1) break;
            /* dT_{j+1} (q, s) = dQ_j^T (q, r d) @ row (r d, s); dQ_{j+1} (s, q) its transpose */
            mm(dq, 1, q, ROW(j, i), dt, q, rd, s, 0);
            for (int64_t y = 0; y < s; y++)
                for (int64_t z = 0; z < q; z++) dq_a[y * q + z] = dt[z * s + y];
            dq = dq_a;
        }
    }
    free(buf);
    free(tt);
    return 0;
}

static int check(int64_t k, const int64_t *const *idx, const int64_t *rows, int64_t n) {
    for (int64_t j = 0; j < k; j++)
        for (int64_t i = 0; idx[j] && i < n; i++)
            if (idx[j][i] < 0 || idx[j][i] >= rows[j]) return -3;
    return 0;
}

/* Both entry points' checks and sizes: 0, or the error code to return. */
static int prepare(int64_t k, const int64_t *dims, const int64_t *ranks, const int64_t *rows,
                   const int64_t *const *idx, int64_t n, int64_t *offs, int64_t *widths,
                   int64_t *widest, int64_t *total) {
    if (k > MAX_CORES) return -1;
    *total = layout(k, dims, ranks, offs, widest);
    if (*total < 0) return -1;
    if (check(k, idx, rows, n)) return -3;
    for (int64_t j = 0; j < k; j++) widths[j] = ranks[j] * dims[j] * ranks[j + 1];
    return 0;
}

/* Whether to chain right to left: strictly fewer multiply-adds. */
static int right_first(int64_t k, const int64_t *dims, const int64_t *ranks) {
    return k > 1 && cost_right(k, dims, ranks) < cost_left(k, dims, ranks);
}

int compemb_tt_forward(int64_t k, const int64_t *dims, const int64_t *ranks,
                       const float *const *tables, const int64_t *rows,
                       const int64_t *const *idx, int64_t n, float *out) {
    int64_t offs[MAX_CORES], widths[MAX_CORES], widest, total;
    int code = prepare(k, dims, ranks, rows, idx, n, offs, widths, &widest, &total);
    if (code) return code;
    int64_t d = total - offs[k - 1];  /* p_{K-1} r_K = D */
    if (right_first(k, dims, ranks))
        return forward_right(k, dims, ranks, tables, rows, idx, widths, n, out);
    float *buf = malloc(2 * total * sizeof(float) + 1);
    if (!buf) return -2;
    for (int64_t i = 0; i < n; i++) {
        const float *prev = ROW(0, i);
        int64_t p = dims[0];
        if (k == 1) { memcpy(out + i * d, prev, d * sizeof(float)); continue; }
        for (int64_t j = 1; j < k; j++) {
            int64_t w = dims[j] * ranks[j + 1];
            float *next = j == k - 1 ? out + i * d : buf + offs[j];
            matmul(prev, ROW(j, i), next, p, ranks[j], w);
            prev = next;
            p *= dims[j];
        }
    }
    free(buf);
    return 0;
}

/* From the output gradient g (n, D), core j's gradient: where dense[j], added into grads[j]
 * (rows[j], w_j) at the id's row; otherwise written to grads[j] (n, w_j), row i for id i; a
 * NULL grads[j] is skipped (its rows are still read). */
int compemb_tt_backward(int64_t k, const int64_t *dims, const int64_t *ranks,
                        const float *const *tables, const int64_t *rows,
                        const int64_t *const *idx, const float *g, int64_t n,
                        const uint8_t *dense, float *const *grads) {
    int64_t offs[MAX_CORES], widths[MAX_CORES], widest, total;
    int code = prepare(k, dims, ranks, rows, idx, n, offs, widths, &widest, &total);
    if (code) return code;
    int64_t d = total - offs[k - 1];
    if (right_first(k, dims, ranks))
        return backward_right(k, dims, ranks, tables, rows, idx, widths, g, n, dense, grads);
    /* parts: P_0 .. P_{K-2}; da, db: the gradient of the current and the previous P; gt: a
     * core row transposed, so that dP = dQ @ row^T runs along contiguous memory too */
    float *parts = malloc((total + 2 * total + widest) * sizeof(float) + 1);
    if (!parts) return -2;
    float *da = parts + total, *db = da + total, *gt = db + total;
    for (int64_t i = 0; i < n; i++) {
        const float *p0 = ROW(0, i);
        int64_t pj[MAX_CORES];
        pj[0] = dims[0];
        const float *prev = p0;
        for (int64_t j = 1; j < k - 1; j++) {
            int64_t w = dims[j] * ranks[j + 1];
            matmul(prev, ROW(j, i), parts + offs[j], pj[j - 1], ranks[j], w);
            prev = parts + offs[j];
            pj[j] = pj[j - 1] * dims[j];
        }
        const float *dq = g + i * d;
        for (int64_t j = k - 1; j >= 1; j--) {
            int64_t r = ranks[j], w = dims[j] * ranks[j + 1], p = pj[j - 1];
            const float *pp = j == 1 ? p0 : parts + offs[j - 1];
            const float *row = ROW(j, i);
            if (grads[j]) {  /* d row (r, w) += P^T (r, p) @ dQ (p, w) */
                float *gr = grads[j] + (dense[j] && idx[j] ? idx[j][i] : i) * r * w;
                mm(pp, 1, r, dq, gr, r, p, w, dense[j]);
            }
            /* dP (p, r) = dQ (p, w) @ row^T (w, r) */
            for (int64_t y = 0; y < r; y++)
                for (int64_t z = 0; z < w; z++) gt[z * r + y] = row[y * w + z];
            float *dp = (j % 2) ? da : db;
            matmul(dq, gt, dp, p, w, r);
            dq = dp;
        }
        if (grads[0]) {
            float *gr = grads[0] + (dense[0] && idx[0] ? idx[0][i] : i) * widths[0];
            if (dense[0])
                for (int64_t y = 0; y < widths[0]; y++) gr[y] += dq[y];
            else
                memcpy(gr, dq, widths[0] * sizeof(float));
        }
    }
    free(parts);
    return 0;
}
