/* ROBE's unaligned blocks (src/compemb/embeddings/batched_robe.py), one pass each way.
 *
 * The array is a table of R rows of width Z (M = R Z elements, row-major); a block at offset o
 * is elements o, ..., o + Z - 1, read circularly. In torch the read is a gather of both rows the
 * block lies in and a gather of the block out of them, and the backward a zero fill, a scatter
 * and the row gradients; here the forward copies Z floats per block and the backward writes
 * the rows each block lies in and their gradients (the block's gradient at its place, zeros
 * around) as the pure-torch path does, so the optimizer sees the same rows. Built with the other kernels
 * by `make kernels`.
 *
 * Every function returns 0, or -1 when an offset is outside [0, M) (nothing is written then).
 */
#include <stdint.h>
#include <string.h>

static int check(const int64_t *offsets, int64_t n, int64_t m) {
    for (int64_t i = 0; i < n; i++)
        if (offsets[i] < 0 || offsets[i] >= m) return -1;
    return 0;
}

/* out[i z + e] = weight[(offsets[i] + e) mod M] for the n blocks. */
int compemb_robe_read(const float *weight, int64_t rows, int64_t z, const int64_t *offsets,
                      int64_t n, float *out) {
    int64_t m = rows * z;
    if (check(offsets, n, m)) return -1;
    for (int64_t i = 0; i < n; i++) {
        int64_t o = offsets[i];
        float *dst = out + i * z;
        if (o + z <= m) {
            memcpy(dst, weight + o, z * sizeof(float));
        } else {
            for (int64_t e = 0; e < z; e++) dst[e] = weight[o + e < m ? o + e : o + e - m];
        }
    }
    return 0;
}

/* The rows the n blocks lie in and their gradients, in block order: row o / Z, then the next
 * row (mod R) unless the block starts a row (o mod Z = 0: it lies in one). A row's gradient is
 * zeros with the block's gradient grads[i Z .. i Z + Z) at its place. *written is the number of
 * rows written (at most 2 n). */
int compemb_robe_row_grads(const float *grads, int64_t rows, int64_t z, const int64_t *offsets,
                           int64_t n, int64_t *row_out, float *values, int64_t *written) {
    if (check(offsets, n, rows * z)) return -1;
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t o = offsets[i], first = o / z, within = o - first * z;
        const float *g = grads + i * z;
        float *v = values + k * z;
        row_out[k++] = first;
        if (within == 0) {
            memcpy(v, g, z * sizeof(float));
            continue;
        }
        row_out[k++] = first + 1 == rows ? 0 : first + 1;
        memset(v, 0, 2 * z * sizeof(float));
        memcpy(v + within, g, z * sizeof(float));
    }
    *written = k;
    return 0;
}

/* The array's whole gradient: each block's gradient grads[i Z .. i Z + Z) added at its offset,
 * circularly, into out (M floats, zeroed by the caller); for a batch whose blocks cover the
 * array many times over, one dense gradient costs less than 2 n row gradients. */
int compemb_robe_add(const float *grads, int64_t rows, int64_t z, const int64_t *offsets,
                     int64_t n, float *out) {
    int64_t m = rows * z;
    if (check(offsets, n, m)) return -1;
    for (int64_t i = 0; i < n; i++) {
        int64_t o = offsets[i];
        const float *g = grads + i * z;
        if (o + z <= m) {
            for (int64_t e = 0; e < z; e++) out[o + e] += g[e];
        } else {
            for (int64_t e = 0; e < z; e++) out[o + e < m ? o + e : o + e - m] += g[e];
        }
    }
    return 0;
}
