/* Seeded universal hashes of ids (src/compemb/embeddings/_universal.py), one pass.
 *
 * h_j(x) = ((a_j x + b_j) mod P) mod m with P = 2^31 - 1: in torch each mod is a pass of scalar
 * 64-bit divisions over an (N, k) int64 temporary (DHE's k = 1024 hashes of a 2048 x 26 batch
 * are 54 M of them, twice). Here mod P is Mersenne folding (2^31 = 1 mod P: add the high bits to
 * the low ones, twice, then subtract P once if needed) and mod m a multiplication by 1/m in
 * double precision, corrected by one step: exact for every 0 <= x < P (the quotient's rounding
 * error, below 2^31 / m * 2^-52, is smaller than the gap 1/m to the next integer). Built with
 * the other kernels by `make kernels`.
 *
 * Every function returns 0, or -1 when an id is outside [0, P) (nothing is written then).
 */
#include <stdint.h>

#define PRIME 2147483647ULL

static inline uint64_t mod_prime(uint64_t y) {
    y = (y & PRIME) + (y >> 31);
    y = (y & PRIME) + (y >> 31);
    return y >= PRIME ? y - PRIME : y;
}

static inline uint64_t mod_m(uint64_t y, uint64_t m, double inverse) {
    uint64_t q = (uint64_t)((double)y * inverse);
    uint64_t r = y - q * m;
    return r >= m ? r - m : r;
}

static int check(const int64_t *ids, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || (uint64_t)ids[i] >= PRIME) return -1;
    return 0;
}

/* out[i k + j] = h_j(ids[i]) (int64): a (2, k) holds a_j in row 0, b_j in row 1. */
int compemb_universal_hash(const int64_t *ids, int64_t n, const int64_t *coefficients,
                           int64_t k, int64_t m, int64_t *out) {
    if (check(ids, n)) return -1;
    const int64_t *a = coefficients, *b = coefficients + k;
    double inverse = 1.0 / (double)m;
    for (int64_t i = 0; i < n; i++) {
        uint64_t x = (uint64_t)ids[i];
        int64_t *o = out + i * k;
        for (int64_t j = 0; j < k; j++)
            o[j] = (int64_t)mod_m(mod_prime((uint64_t)a[j] * x + (uint64_t)b[j]), m, inverse);
    }
    return 0;
}

/* Per-column hashes: ids (n, g) row-major, coefficients (g, 2, k) (column c's a_j in row 0 of its
 * (2, k), b_j in row 1): out[(i g + c) k + j] = h_{c,j}(ids[i g + c]) (int64). Every feature of
 * a stacked group hashes its own column with its own hashes, in one pass over the batch. */
int compemb_universal_hash_columns(const int64_t *ids, int64_t n, int64_t g,
                                   const int64_t *coefficients, int64_t k, int64_t m,
                                   int64_t *out) {
    if (check(ids, n * g)) return -1;
    double inverse = 1.0 / (double)m;
    for (int64_t i = 0; i < n; i++) {
        for (int64_t c = 0; c < g; c++) {
            const int64_t *a = coefficients + c * 2 * k, *b = a + k;
            uint64_t x = (uint64_t)ids[i * g + c];
            int64_t *o = out + (i * g + c) * k;
            for (int64_t j = 0; j < k; j++)
                o[j] = (int64_t)mod_m(mod_prime((uint64_t)a[j] * x + (uint64_t)b[j]), m,
                                      inverse);
        }
    }
    return 0;
}

/* out[i k + j] = (float)h_j(ids[i]) * scale + shift, rounded as torch's float32 ops round
 * (a product, then a sum: built without contracting them into one fused multiply-add). */
int compemb_hash_affine(const int64_t *ids, int64_t n, const int64_t *coefficients, int64_t k,
                        int64_t m, float scale, float shift, float *out) {
    if (check(ids, n)) return -1;
    const int64_t *a = coefficients, *b = coefficients + k;
    double inverse = 1.0 / (double)m;
    for (int64_t i = 0; i < n; i++) {
        uint64_t x = (uint64_t)ids[i];
        float *o = out + i * k;
        for (int64_t j = 0; j < k; j++) {
            float h = (float)mod_m(mod_prime((uint64_t)a[j] * x + (uint64_t)b[j]), m, inverse);
            float scaled = h * scale;
            o[j] = scaled + shift;
        }
    }
    return 0;
}
