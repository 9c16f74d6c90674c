/* The product of two gathered rows (QR mult's composition), forward and backward, one pass each.
 *
 * The pure-torch node (src/compemb/embeddings/_fused.py) gathers each table's rows, masks the
 * features that have no second table, multiplies, and in the backward multiplies again and
 * accumulates: several passes over N x D floats and their temporaries. These loops do each id's
 * work while its rows are in cache. Built with csrc/sparse_adagrad.c by `make kernels`.
 *
 * Layout: ids i = 0..n-1 in row-major (B, C) order, so id i is feature column i % C; absent[c]
 * (may be NULL) marks the columns whose second factor is the identity (1) and get no gradient.
 * Every function returns 0, or -1 when a row index is out of range (nothing read out of bounds).
 */
#include <stdint.h>
#include <string.h>

#define AHEAD 16

static int check(const int64_t *idx, int64_t n, int64_t rows) {
    for (int64_t i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= rows) return -1;
    return 0;
}

/* out[i] = A[ia[i]] * B[ib[i]]; kept (may be NULL) receives A[ia[i]] for the backward. */
int compemb_mult2_forward(const float *A, int64_t ra, const float *B, int64_t rb,
                          const int64_t *ia, const int64_t *ib, int64_t n, int64_t d, int64_t c,
                          const uint8_t *absent, float *out, float *kept) {
    if (check(ia, n, ra) || check(ib, n, rb)) return -1;
    for (int64_t i = 0; i < n; i++) {
        if (i + AHEAD < n) __builtin_prefetch(A + ia[i + AHEAD] * d, 0);
        const float *a = A + ia[i] * d;
        float *o = out + i * d;
        if (kept) memcpy(kept + i * d, a, d * sizeof(float));
        if (absent && absent[i % c]) {
            memcpy(o, a, d * sizeof(float));
        } else {
            const float *b = B + ib[i] * d;
            for (int64_t k = 0; k < d; k++) o[k] = a[k] * b[k];
        }
    }
    return 0;
}

/* From the output gradient g: table A's gradient rows g * B[ib] into val_a (n, D) or, when
 * val_a is NULL, accumulated into dense_a (ra, D) (either may be skipped: both NULL); table B's
 * likewise from g * A[ia] (A's rows from kept when given). Absent columns: A gets g itself, B
 * nothing. */
int compemb_mult2_backward(const float *g, const float *A, int64_t ra, const float *kept,
                           const float *B, int64_t rb, const int64_t *ia, const int64_t *ib,
                           int64_t n, int64_t d, int64_t c, const uint8_t *absent,
                           float *val_a, float *dense_a, float *val_b, float *dense_b) {
    if (check(ia, n, ra) || check(ib, n, rb)) return -1;
    int want_b = val_b || dense_b;
    for (int64_t i = 0; i < n; i++) {
        const float *gi = g + i * d;
        int none = absent && absent[i % c];
        const float *b = B + ib[i] * d;
        if (val_a || dense_a) {
            float *to = val_a ? val_a + i * d : dense_a + ia[i] * d;
            if (val_a) {
                if (none) memcpy(to, gi, d * sizeof(float));
                else for (int64_t k = 0; k < d; k++) to[k] = gi[k] * b[k];
            } else {
                if (none) for (int64_t k = 0; k < d; k++) to[k] += gi[k];
                else for (int64_t k = 0; k < d; k++) to[k] += gi[k] * b[k];
            }
        }
        if (want_b) {
            if (!kept && i + AHEAD < n) __builtin_prefetch(A + ia[i + AHEAD] * d, 0);
            const float *a = kept ? kept + i * d : A + ia[i] * d;
            if (val_b) {
                float *to = val_b + i * d;
                if (none) memset(to, 0, d * sizeof(float));
                else for (int64_t k = 0; k < d; k++) to[k] = gi[k] * a[k];
            } else if (!none) {
                float *to = dense_b + ib[i] * d;
                for (int64_t k = 0; k < d; k++) to[k] += gi[k] * a[k];
            }
        }
    }
    return 0;
}
