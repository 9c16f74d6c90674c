/* One Adagrad step on the rows of an embedding table that a batch touched, in one pass.
 *
 * compemb's pure-torch update (src/compemb/optim/fused.py, sparse_adagrad_) sorts the row
 * indices, sums each row's gradients, then reads and writes the state and the weight rows in four
 * separate gathers and scatters. Here: a stable radix sort of (row, position) pairs, then for each
 * run of equal rows the gradients are summed in batch order (as torch's index_add_ sums them) and
 * the state and weight rows are updated in place while they are in cache. Built by `make kernels`
 * (`make test` and `make demo` depend on it) with the system C compiler; loaded with ctypes.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BITS 11
#define BUCKETS (1 << BITS)
#define AHEAD 32  /* sorted entries ahead whose rows are prefetched */

/* Returns 0, -1 for a row outside [0, num_rows), -2 when memory runs out. state_dim is dim
 * (exact Adagrad: one accumulator per element) or 1 (row-wise: the mean squared gradient). */
int compemb_sparse_adagrad(float *weight, float *state, int64_t num_rows, int64_t dim,
                           int64_t state_dim, const int64_t *rows, const float *grads, int64_t n,
                           float lr, float eps) {
    if (n <= 0) return 0;
    int64_t max_row = 0;
    for (int64_t i = 0; i < n; i++) {
        if (rows[i] < 0 || rows[i] >= num_rows) return -1;
        if (rows[i] > max_row) max_row = rows[i];
    }
    uint64_t *key = malloc(2 * n * sizeof(uint64_t));
    int64_t *pos = malloc(2 * n * sizeof(int64_t));
    float *g = malloc(dim * sizeof(float));
    if (!key || !pos || !g) {
        free(key); free(pos); free(g);
        return -2;
    }
    uint64_t *key2 = key + n;
    int64_t *pos2 = pos + n;
    for (int64_t i = 0; i < n; i++) {
        key[i] = (uint64_t)rows[i];
        pos[i] = i;
    }
    /* LSD radix sort, stable: equal rows keep their batch order. */
    for (int shift = 0; shift < 64 && (shift == 0 || (max_row >> shift) > 0); shift += BITS) {
        int64_t count[BUCKETS + 1];
        memset(count, 0, sizeof(count));
        for (int64_t i = 0; i < n; i++) count[((key[i] >> shift) & (BUCKETS - 1)) + 1]++;
        for (int b = 0; b < BUCKETS; b++) count[b + 1] += count[b];
        for (int64_t i = 0; i < n; i++) {
            int64_t at = count[(key[i] >> shift) & (BUCKETS - 1)]++;
            key2[at] = key[i];
            pos2[at] = pos[i];
        }
        uint64_t *tk = key; key = key2; key2 = tk;
        int64_t *tp = pos; pos = pos2; pos2 = tp;
    }
    for (int64_t a = 0; a < n;) {
        int64_t row = (int64_t)key[a];
        if (a + AHEAD < n) {
            __builtin_prefetch(weight + (int64_t)key[a + AHEAD] * dim, 1);
            __builtin_prefetch(state + (int64_t)key[a + AHEAD] * state_dim, 1);
            __builtin_prefetch(grads + pos[a + AHEAD] * dim, 0);
        }
        const float *src = grads + pos[a] * dim;
        for (int64_t d = 0; d < dim; d++) g[d] = src[d];
        int64_t b = a + 1;
        for (; b < n && key[b] == (uint64_t)row; b++) {
            src = grads + pos[b] * dim;
            for (int64_t d = 0; d < dim; d++) g[d] += src[d];
        }
        float *w = weight + row * dim;
        float *s = state + row * state_dim;
        if (state_dim == dim) {
            for (int64_t d = 0; d < dim; d++) {
                s[d] += g[d] * g[d];
                w[d] -= lr * (g[d] / (sqrtf(s[d]) + eps));
            }
        } else {
            float square = 0.0f;
            for (int64_t d = 0; d < dim; d++) square += g[d] * g[d];
            s[0] += square / (float)dim;
            float denom = sqrtf(s[0]) + eps;
            for (int64_t d = 0; d < dim; d++) w[d] -= lr * (g[d] / denom);
        }
        a = b;
    }
    /* the sort swapped buffers an unknown number of times: free the original allocations */
    free(key < key2 ? key : key2);
    free(pos < pos2 ? pos : pos2);
    free(g);
    return 0;
}
