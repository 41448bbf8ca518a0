/* Optional single-pass kernels for the numerical core (paddleslim_static.core.kernels wraps them).
 *
 * They compute exactly what the numpy code paths in selection.py / scores.py / engine.py compute, on the
 * same uint32 keys (float32 bit patterns with the sign bit cleared), in one pass instead of several:
 *
 *   stream(keys, lo, hi, band_out)        -> (#keys <= lo, #keys in (lo, hi] written to band_out, max key)
 *   stream_w(keys, ncols, w_int, w_last, lo, hi, band_out, band_w_out)
 *                                          -> the same over rows of ncols keys, each key standing for w_int
 *                                             elements (the last of a row: w_last); counts are weighted
 *   mask_apply(w, mask, t_key, apply)     -> mask = key(w) >= t_key; if apply: w *= mask
 *   apply(w, mask)                        -> w *= mask
 *   block_scores(w, rows, D, m, L, out)   -> out[I, J] = float32(mean |w| of block (I, J)) (see scores.py)
 *   block_mask_apply(w, mask, keys, rows, D, m, L, t_key, apply)
 *                                          -> mask = block key >= t_key; if apply: w *= mask
 *
 * Every buffer is checked: C-contiguous, its struct format (float32 'f', uint32 'I', bool/uint8 '?'/'B'),
 * item size and length. Integers are parsed with overflow checks. Data is read and written through memcpy,
 * so any alignment is defined behaviour and no -fno-strict-aliasing is needed. Every kernel releases the GIL,
 * so the Python side may run disjoint slices on several threads.
 * w * (float)mask is an IEEE multiply (no -ffast-math): -0.0 and NaN come out as numpy's np.multiply gives them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(__clang__) && \
    !defined(PADDLESLIM_NO_CLONES)
#define MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define MULTIVERSION
#endif

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define HAVE_AVX2_PATH 1
#include <immintrin.h>
#endif

#define BLOCK 32
#define ABS_MASK 0x7FFFFFFFu

static inline uint32_t load_u32(const unsigned char *p, Py_ssize_t i)
{
    uint32_t v;
    memcpy(&v, p + 4 * i, 4);
    return v;
}

static inline float load_f32(const unsigned char *p, Py_ssize_t i)
{
    float v;
    memcpy(&v, p + 4 * i, 4);
    return v;
}

static inline void store_u32(unsigned char *p, Py_ssize_t i, uint32_t v) { memcpy(p + 4 * i, &v, 4); }

static inline void store_f32(unsigned char *p, Py_ssize_t i, float v) { memcpy(p + 4 * i, &v, 4); }

/* ---- stream ------------------------------------------------------------------------------------------------ */

/* The scalar loop both versions finish with (and the reference for what one key does). */
static uint32_t stream_tail(const unsigned char *bits, Py_ssize_t i, Py_ssize_t n, uint32_t lo, uint32_t hi,
                            uint64_t le, uint32_t mx, unsigned char *band, Py_ssize_t b, uint64_t *n_le,
                            Py_ssize_t *nb)
{
    const uint32_t start = lo + 1u, width = hi - lo - 1u;
    for (; i < n; i++) {
        uint32_t k = load_u32(bits, i) & ABS_MASK;
        mx = k > mx ? k : mx;
        le += (k <= lo);
        if (hi > lo) {
            store_u32(band, b, k);
            b += ((uint32_t)(k - start) <= width);
        }
    }
    *n_le = le;
    *nb = b;
    return mx;
}

/* Portable version (any compiler/CPU): a vectorisable check per BLOCK keys, a scalar compaction for the rare
 * blocks that hold band keys. */
static uint32_t stream_portable(const unsigned char *bits, Py_ssize_t n, uint32_t lo, uint32_t hi, uint64_t *n_le,
                                unsigned char *band, Py_ssize_t *nb)
{
    uint64_t le = 0;
    Py_ssize_t b = 0, i = 0;
    uint32_t mx = 0;
    const uint32_t start = lo + 1u, width = hi - lo - 1u; /* (k - start) <= width  <=>  lo < k <= hi */
    const int has_band = hi > lo;
    for (; i + BLOCK <= n; i += BLOCK) {
        uint32_t any = 0, lec = 0, bmx = 0;
        for (int j = 0; j < BLOCK; j++) { /* vectorised: no stores */
            uint32_t k = load_u32(bits, i + j) & ABS_MASK;
            bmx = k > bmx ? k : bmx;
            lec += (k <= lo);
            any |= ((uint32_t)(k - start) <= width);
        }
        le += lec;
        mx = bmx > mx ? bmx : mx;
        if (any && has_band) { /* rare: ~1-2% of keys are in the band */
            for (int j = 0; j < BLOCK; j++) {
                uint32_t k = load_u32(bits, i + j) & ABS_MASK;
                store_u32(band, b, k);
                b += ((uint32_t)(k - start) <= width);
            }
        }
    }
    return stream_tail(bits, i, n, lo, hi, le, mx, band, b, n_le, nb);
}

#ifdef HAVE_AVX2_PATH
static uint32_t pack_lut[256][8]; /* pack_lut[m]: the indices of the set bits of m, then zeros */

static void init_pack_lut(void)
{
    for (int m = 0; m < 256; m++) {
        int j = 0;
        for (int bit = 0; bit < 8; bit++)
            if (m & (1 << bit))
                pack_lut[m][j++] = (uint32_t)bit;
        for (; j < 8; j++)
            pack_lut[m][j] = 0;
    }
}

/* AVX2 version, 16 keys per step. Keys are < 2^31 once the sign bit is cleared and lo <= hi <= 0x7FFFFFFF
 * (checked by the caller), so signed compares order them: k <= lo <=> !(k > lo), lo < k <= hi <=> (k > lo) &
 * !(k > hi). The counter sums the (k > lo) lanes; band keys are found with movemask + ctz. */
__attribute__((target("avx2"))) static uint32_t stream_avx2(const unsigned char *bits, Py_ssize_t n, uint32_t lo,
                                                            uint32_t hi, uint64_t *n_le, unsigned char *band,
                                                            Py_ssize_t *nb)
{
    const int has_band = hi > lo;
    const __m256i ABS = _mm256_set1_epi32(0x7FFFFFFF);
    const __m256i LO = _mm256_set1_epi32((int)lo), HI = _mm256_set1_epi32((int)hi);
    __m256i vmx0 = _mm256_setzero_si256(), vmx1 = _mm256_setzero_si256();
    Py_ssize_t b = 0, i = 0;
    uint64_t gt = 0;
    uint32_t t[8], mx = 0;
    const Py_ssize_t n16 = n & ~(Py_ssize_t)15;
    while (i < n16) {
        Py_ssize_t end = n16 - i > ((Py_ssize_t)1 << 24) ? i + ((Py_ssize_t)1 << 24) : n16; /* lanes < 2^32 */
        __m256i vgt = _mm256_setzero_si256();
        for (; i < end; i += 16) {
            __m256i k0 = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(bits + 4 * i)), ABS);
            __m256i k1 = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(bits + 4 * i + 32)), ABS);
            vmx0 = _mm256_max_epi32(vmx0, k0);
            vmx1 = _mm256_max_epi32(vmx1, k1);
            __m256i g0 = _mm256_cmpgt_epi32(k0, LO), g1 = _mm256_cmpgt_epi32(k1, LO);
            vgt = _mm256_sub_epi32(vgt, g0);
            vgt = _mm256_sub_epi32(vgt, g1);
            if (!has_band)
                continue;
            __m256i b0 = _mm256_andnot_si256(_mm256_cmpgt_epi32(k0, HI), g0);
            __m256i b1 = _mm256_andnot_si256(_mm256_cmpgt_epi32(k1, HI), g1);
            /* branch-free left-pack: the band lanes of each 8 keys moved to the front and stored at band + b
             * (b <= i, so the 8-lane store stays inside band_out, which holds n items); b advances by their count */
            __m256i any = _mm256_or_si256(b0, b1);
            if (_mm256_testz_si256(any, any))
                continue;
            unsigned m0 = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(b0));
            unsigned m1 = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(b1));
            _mm256_storeu_si256((__m256i *)(band + 4 * b),
                                _mm256_permutevar8x32_epi32(k0, _mm256_loadu_si256((const __m256i *)pack_lut[m0])));
            b += __builtin_popcount(m0);
            _mm256_storeu_si256((__m256i *)(band + 4 * b),
                                _mm256_permutevar8x32_epi32(k1, _mm256_loadu_si256((const __m256i *)pack_lut[m1])));
            b += __builtin_popcount(m1);
        }
        _mm256_storeu_si256((__m256i *)t, vgt);
        for (int j = 0; j < 8; j++)
            gt += t[j];
    }
    _mm256_storeu_si256((__m256i *)t, _mm256_max_epi32(vmx0, vmx1));
    for (int j = 0; j < 8; j++)
        mx = t[j] > mx ? t[j] : mx;
    return stream_tail(bits, i, n, lo, hi, (uint64_t)n16 - gt, mx, band, b, n_le, nb);
}
#endif

static int allow_avx2 = 1; /* tests switch it off to run the portable version on AVX2 machines */

static uint32_t stream_u32(const unsigned char *bits, Py_ssize_t n, uint32_t lo, uint32_t hi, uint64_t *n_le,
                           unsigned char *band, Py_ssize_t *nb)
{
#ifdef HAVE_AVX2_PATH
    if (allow_avx2 && __builtin_cpu_supports("avx2"))
        return stream_avx2(bits, n, lo, hi, n_le, band, nb);
#endif
    return stream_portable(bits, n, lo, hi, n_le, band, nb);
}

/* Rows of ncols keys; each key stands for w_int elements, the last key of a row for w_last. */
static uint32_t stream_weighted(const unsigned char *bits, Py_ssize_t n, Py_ssize_t ncols, uint64_t w_int,
                                uint64_t w_last, uint32_t lo, uint32_t hi, uint64_t *n_le, unsigned char *band,
                                unsigned char *band_w, Py_ssize_t *nb)
{
    uint64_t le = 0;
    uint32_t mx = 0;
    Py_ssize_t b = 0;
    for (Py_ssize_t r = 0; r + ncols <= n; r += ncols) {
        uint64_t c_le = 0;
        Py_ssize_t got = 0;
        uint32_t m = stream_u32(bits + 4 * r, ncols - 1, lo, hi, &c_le, band + 4 * b, &got);
        mx = m > mx ? m : mx;
        le += c_le * w_int;
        for (Py_ssize_t j = 0; j < got; j++)
            memcpy(band_w + 8 * (b + j), &w_int, 8);
        b += got;
        uint32_t k = load_u32(bits, r + ncols - 1) & ABS_MASK;
        mx = k > mx ? k : mx;
        le += (k <= lo) ? w_last : 0;
        if (k > lo && k <= hi) {
            store_u32(band, b, k);
            memcpy(band_w + 8 * b, &w_last, 8);
            b++;
        }
    }
    *n_le = le;
    *nb = b;
    return mx;
}

/* ---- masks ------------------------------------------------------------------------------------------------- */

MULTIVERSION
static void mask_f32(const unsigned char *restrict bits, unsigned char *restrict mask, Py_ssize_t n, uint32_t t_key)
{
    for (Py_ssize_t i = 0; i < n; i++)
        mask[i] = (unsigned char)((load_u32(bits, i) & ABS_MASK) >= t_key);
}

MULTIVERSION
static void apply_f32(unsigned char *restrict w, const unsigned char *restrict mask, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) /* mask bytes are 0/1 (numpy bool): an IEEE multiply by 0.0f or 1.0f */
        store_f32(w, i, load_f32(w, i) * (float)mask[i]);
}

/* mask then apply, 4096 elements at a time so the second loop reads from L1 */
static void mask_apply_f32(unsigned char *w, unsigned char *mask, Py_ssize_t n, uint32_t t_key, int apply)
{
    for (Py_ssize_t a = 0; a < n; a += 4096) {
        Py_ssize_t m = n - a < 4096 ? n - a : 4096;
        mask_f32(w + 4 * a, mask + a, m, t_key);
        if (apply)
            apply_f32(w + 4 * a, mask + a, m);
    }
}

/* ---- blocks ------------------------------------------------------------------------------------------------ *
 * w is (rows, D) float32; blocks are m rows x L columns (L = n * trailing size); the last block row / column
 * may be smaller. Summation order (numpy's fallback in scores.py follows it exactly): for each block row,
 * acc[c] = |w[r0, c]| + |w[r0 + 1, c]| + ... (float64, in row order), then per block
 * s = acc[c0] + acc[c0 + 1] + ... (in column order), score = (float)(s / count). */

MULTIVERSION
static void acc_row(double *restrict acc, const unsigned char *restrict row, Py_ssize_t D, int first)
{
    if (first)
        for (Py_ssize_t c = 0; c < D; c++)
            acc[c] = (double)fabsf(load_f32(row, c));
    else
        for (Py_ssize_t c = 0; c < D; c++)
            acc[c] += (double)fabsf(load_f32(row, c));
}

/* s[J] = acc[J*L] + acc[J*L + 1] + ... (left to right, as the numpy code adds them), for the full blocks */
MULTIVERSION
static void block_sums(const double *restrict acc, double *restrict s, Py_ssize_t nfull, Py_ssize_t L)
{
    for (Py_ssize_t J = 0; J < nfull; J++)
        s[J] = acc[J * L];
    for (Py_ssize_t c = 1; c < L; c++)
        for (Py_ssize_t J = 0; J < nfull; J++)
            s[J] += acc[J * L + c];
}

MULTIVERSION
static void block_means(const double *restrict s, unsigned char *restrict out, Py_ssize_t nfull, double count)
{
    for (Py_ssize_t J = 0; J < nfull; J++)
        store_f32(out, J, (float)(s[J] / count));
}

static int block_scores_f32(const unsigned char *w, Py_ssize_t rows, Py_ssize_t D, Py_ssize_t m, Py_ssize_t L,
                            unsigned char *out)
{
    const Py_ssize_t nbj = (D + L - 1) / L, nfull = D / L;
    double *acc = (double *)malloc((size_t)(D + nbj + 1) * sizeof(double));
    if (acc == NULL)
        return -1;
    double *sums = acc + D;
    for (Py_ssize_t r0 = 0, I = 0; r0 < rows; r0 += m, I++) {
        const Py_ssize_t nr = rows - r0 < m ? rows - r0 : m;
        for (Py_ssize_t r = 0; r < nr; r++)
            acc_row(acc, w + 4 * (r0 + r) * D, D, r == 0);
        block_sums(acc, sums, nfull, L);
        block_means(sums, out + 4 * I * nbj, nfull, (double)(nr * L));
        if (nfull < nbj) { /* the narrower last block column */
            double t = acc[nfull * L];
            for (Py_ssize_t c = nfull * L + 1; c < D; c++)
                t += acc[c];
            store_f32(out, I * nbj + nfull, (float)(t / (double)(nr * (D - nfull * L))));
        }
    }
    free(acc);
    return 0;
}

static void block_mask_apply_f32(unsigned char *w, unsigned char *mask, const unsigned char *keys, Py_ssize_t rows,
                                 Py_ssize_t D, Py_ssize_t m, Py_ssize_t L, uint32_t t_key, int apply)
{
    const Py_ssize_t nbj = (D + L - 1) / L;
    for (Py_ssize_t r0 = 0, I = 0; r0 < rows; r0 += m, I++) {
        const Py_ssize_t nr = rows - r0 < m ? rows - r0 : m;
        unsigned char *first = mask + r0 * D; /* the block row's mask row, written once and copied */
        for (Py_ssize_t J = 0; J < nbj; J++) {
            const Py_ssize_t c0 = J * L, c1 = c0 + L < D ? c0 + L : D;
            memset(first + c0, (load_u32(keys, I * nbj + J) & ABS_MASK) >= t_key, (size_t)(c1 - c0));
        }
        for (Py_ssize_t r = 1; r < nr; r++)
            memcpy(first + r * D, first, (size_t)D);
        if (apply)
            for (Py_ssize_t r = 0; r < nr; r++)
                apply_f32(w + 4 * (r0 + r) * D, first + r * D, D);
    }
}

/* ---- argument checks --------------------------------------------------------------------------------------- */

/* kind: 'f' float32, 'I' uint32, '?' bool or uint8, 'q' int64 */
static int format_ok(const char *fmt, char kind)
{
    if (fmt == NULL)
        return 0; /* a buffer without a format is raw bytes: refused */
    if (*fmt == '@' || *fmt == '=' || *fmt == '<' || *fmt == '|') {
#if PY_LITTLE_ENDIAN
        fmt++;
#else
        if (*fmt == '<')
            return 0;
        fmt++;
#endif
    }
    if (fmt[0] == '\0' || fmt[1] != '\0')
        return 0;
    switch (kind) {
    case 'f': return fmt[0] == 'f';
    case 'I': return fmt[0] == 'I' || fmt[0] == 'L';
    case '?': return fmt[0] == '?' || fmt[0] == 'B';
    case 'q': return fmt[0] == 'q' || fmt[0] == 'l';
    }
    return 0;
}

static int get_buf(PyObject *obj, Py_buffer *buf, char kind, Py_ssize_t itemsize, int writable, const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, buf, flags) < 0)
        return -1;
    if (buf->itemsize != itemsize || !format_ok(buf->format, kind) || buf->len % itemsize != 0) {
        PyErr_Format(PyExc_TypeError, "%s: expected a C-contiguous %s buffer; got format %s, item size %zd", name,
                     kind == 'f' ? "float32" : kind == 'I' ? "uint32" : kind == 'q' ? "int64" : "bool/uint8",
                     buf->format ? buf->format : "(none)", buf->itemsize);
        PyBuffer_Release(buf);
        buf->obj = NULL;
        return -1;
    }
    return 0;
}

static void release(Py_buffer *b)
{
    if (b->obj != NULL)
        PyBuffer_Release(b);
}

/* A Python int in [0, max]: no wrap-around ("k" would take 2**64 + 5 as 5). */
static int get_uint(PyObject *obj, unsigned long long max, unsigned long long *out, const char *name)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int; got %.100s", name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow != 0 || v < 0 || (unsigned long long)v > max) {
        PyErr_Format(PyExc_ValueError, "%s must be in [0, %llu]; got %R", name, max, obj);
        return -1;
    }
    *out = (unsigned long long)v;
    return 0;
}

#define KEY_MAX 0x7FFFFFFFull
#define SIZE_MAX_PY ((unsigned long long)PY_SSIZE_T_MAX)

static int get_lo_hi(PyObject *olo, PyObject *ohi, uint32_t *lo, uint32_t *hi)
{
    unsigned long long a, b;
    if (get_uint(olo, KEY_MAX, &a, "lo") < 0 || get_uint(ohi, KEY_MAX, &b, "hi") < 0)
        return -1;
    if (b < a) {
        PyErr_SetString(PyExc_ValueError, "lo and hi must be keys with lo <= hi");
        return -1;
    }
    *lo = (uint32_t)a;
    *hi = (uint32_t)b;
    return 0;
}

/* ---- Python entry points ----------------------------------------------------------------------------------- */

static PyObject *py_stream(PyObject *self, PyObject *args)
{
    PyObject *okeys, *olo, *ohi, *oband;
    if (!PyArg_ParseTuple(args, "OOOO", &okeys, &olo, &ohi, &oband))
        return NULL;
    uint32_t lo, hi;
    if (get_lo_hi(olo, ohi, &lo, &hi) < 0)
        return NULL;
    Py_buffer keys = {0}, band = {0};
    PyObject *res = NULL;
    if (get_buf(okeys, &keys, 'I', 4, 0, "keys") < 0 || get_buf(oband, &band, 'I', 4, 1, "band_out") < 0)
        goto done;
    if (band.len < keys.len) {
        PyErr_SetString(PyExc_ValueError, "band_out must be at least as long as keys");
        goto done;
    }
    uint64_t n_le = 0;
    Py_ssize_t nb = 0;
    uint32_t mx;
    Py_BEGIN_ALLOW_THREADS
    mx = stream_u32((const unsigned char *)keys.buf, keys.len / 4, lo, hi, &n_le, (unsigned char *)band.buf, &nb);
    Py_END_ALLOW_THREADS
    res = Py_BuildValue("KnK", (unsigned long long)n_le, nb, (unsigned long long)mx);
done:
    release(&keys);
    release(&band);
    return res;
}

static PyObject *py_stream_w(PyObject *self, PyObject *args)
{
    PyObject *okeys, *oncols, *owi, *owl, *olo, *ohi, *oband, *obw;
    if (!PyArg_ParseTuple(args, "OOOOOOOO", &okeys, &oncols, &owi, &owl, &olo, &ohi, &oband, &obw))
        return NULL;
    uint32_t lo, hi;
    unsigned long long ncols, w_int, w_last;
    if (get_lo_hi(olo, ohi, &lo, &hi) < 0 || get_uint(oncols, SIZE_MAX_PY, &ncols, "ncols") < 0 ||
        get_uint(owi, 1ull << 40, &w_int, "w_int") < 0 || get_uint(owl, 1ull << 40, &w_last, "w_last") < 0)
        return NULL;
    Py_buffer keys = {0}, band = {0}, bw = {0};
    PyObject *res = NULL;
    if (get_buf(okeys, &keys, 'I', 4, 0, "keys") < 0 || get_buf(oband, &band, 'I', 4, 1, "band_out") < 0 ||
        get_buf(obw, &bw, 'q', 8, 1, "band_w_out") < 0)
        goto done;
    const Py_ssize_t n = keys.len / 4;
    if (ncols == 0 || n % (Py_ssize_t)ncols != 0) {
        PyErr_Format(PyExc_ValueError, "ncols must divide the number of keys (%zd); got %llu", n, ncols);
        goto done;
    }
    if ((w_int > w_last ? w_int : w_last) > (1ull << 62) / (unsigned long long)(n + 1)) {
        PyErr_SetString(PyExc_ValueError, "w_int and w_last times the number of keys must stay below 2**62");
        goto done;
    }
    if (band.len / 4 < n || bw.len / 8 < n) {
        PyErr_SetString(PyExc_ValueError, "band_out and band_w_out must hold at least as many items as keys");
        goto done;
    }
    uint64_t n_le = 0;
    Py_ssize_t nb = 0;
    uint32_t mx;
    Py_BEGIN_ALLOW_THREADS
    mx = stream_weighted((const unsigned char *)keys.buf, n, (Py_ssize_t)ncols, w_int, w_last, lo, hi, &n_le,
                         (unsigned char *)band.buf, (unsigned char *)bw.buf, &nb);
    Py_END_ALLOW_THREADS
    res = Py_BuildValue("KnK", (unsigned long long)n_le, nb, (unsigned long long)mx);
done:
    release(&keys);
    release(&band);
    release(&bw);
    return res;
}

static PyObject *py_mask_apply(PyObject *self, PyObject *args)
{
    PyObject *ow, *om, *ot;
    int apply;
    if (!PyArg_ParseTuple(args, "OOOp", &ow, &om, &ot, &apply))
        return NULL;
    unsigned long long t_key;
    if (get_uint(ot, 0xFFFFFFFFull, &t_key, "t_key") < 0)
        return NULL;
    Py_buffer w = {0}, mask = {0};
    PyObject *res = NULL;
    if (get_buf(ow, &w, 'f', 4, apply, "w") < 0 || get_buf(om, &mask, '?', 1, 1, "mask") < 0)
        goto done;
    if (mask.len != w.len / 4) {
        PyErr_SetString(PyExc_ValueError, "mask must have one byte per float32 weight");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    mask_apply_f32((unsigned char *)w.buf, (unsigned char *)mask.buf, mask.len, (uint32_t)t_key, apply);
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    res = Py_None;
done:
    release(&w);
    release(&mask);
    return res;
}

static PyObject *py_apply(PyObject *self, PyObject *args)
{
    PyObject *ow, *om;
    if (!PyArg_ParseTuple(args, "OO", &ow, &om))
        return NULL;
    Py_buffer w = {0}, mask = {0};
    PyObject *res = NULL;
    if (get_buf(ow, &w, 'f', 4, 1, "w") < 0 || get_buf(om, &mask, '?', 1, 0, "mask") < 0)
        goto done;
    if (mask.len != w.len / 4) {
        PyErr_SetString(PyExc_ValueError, "mask must have one byte per float32 weight");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    apply_f32((unsigned char *)w.buf, (const unsigned char *)mask.buf, mask.len);
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    res = Py_None;
done:
    release(&w);
    release(&mask);
    return res;
}

/* rows, D, m, L as checked sizes; the weights hold rows * D items */
static int get_geometry(PyObject *const *o, Py_ssize_t n_items, unsigned long long g[4])
{
    static const char *names[4] = {"rows", "D", "m", "L"};
    for (int i = 0; i < 4; i++)
        if (get_uint(o[i], SIZE_MAX_PY, &g[i], names[i]) < 0)
            return -1;
    if (g[2] == 0 || g[3] == 0 || (g[1] != 0 && g[0] > SIZE_MAX_PY / g[1]) || (Py_ssize_t)(g[0] * g[1]) != n_items) {
        PyErr_Format(PyExc_ValueError, "block geometry (rows=%llu, D=%llu, m=%llu, L=%llu) does not match %zd weights",
                     g[0], g[1], g[2], g[3], n_items);
        return -1;
    }
    return 0;
}

static PyObject *py_block_scores(PyObject *self, PyObject *args)
{
    PyObject *ow, *o[4], *oout;
    if (!PyArg_ParseTuple(args, "OOOOOO", &ow, &o[0], &o[1], &o[2], &o[3], &oout))
        return NULL;
    Py_buffer w = {0}, out = {0};
    PyObject *res = NULL;
    unsigned long long g[4];
    if (get_buf(ow, &w, 'f', 4, 0, "w") < 0 || get_buf(oout, &out, 'f', 4, 1, "out") < 0)
        goto done;
    if (get_geometry(o, w.len / 4, g) < 0)
        goto done;
    if (out.len / 4 != (Py_ssize_t)(((g[0] + g[2] - 1) / g[2]) * ((g[1] + g[3] - 1) / g[3]))) {
        PyErr_SetString(PyExc_ValueError, "out must hold one float32 per block");
        goto done;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = block_scores_f32((const unsigned char *)w.buf, (Py_ssize_t)g[0], (Py_ssize_t)g[1], (Py_ssize_t)g[2],
                          (Py_ssize_t)g[3], (unsigned char *)out.buf);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        PyErr_NoMemory();
        goto done;
    }
    Py_INCREF(Py_None);
    res = Py_None;
done:
    release(&w);
    release(&out);
    return res;
}

static PyObject *py_block_mask_apply(PyObject *self, PyObject *args)
{
    PyObject *ow, *om, *ok, *o[4], *ot;
    int apply;
    if (!PyArg_ParseTuple(args, "OOOOOOOOp", &ow, &om, &ok, &o[0], &o[1], &o[2], &o[3], &ot, &apply))
        return NULL;
    unsigned long long t_key, g[4];
    if (get_uint(ot, 0xFFFFFFFFull, &t_key, "t_key") < 0)
        return NULL;
    Py_buffer w = {0}, mask = {0}, keys = {0};
    PyObject *res = NULL;
    if (get_buf(ow, &w, 'f', 4, apply, "w") < 0 || get_buf(om, &mask, '?', 1, 1, "mask") < 0 ||
        get_buf(ok, &keys, 'I', 4, 0, "keys") < 0)
        goto done;
    if (get_geometry(o, w.len / 4, g) < 0)
        goto done;
    if (mask.len != w.len / 4 ||
        keys.len / 4 != (Py_ssize_t)(((g[0] + g[2] - 1) / g[2]) * ((g[1] + g[3] - 1) / g[3]))) {
        PyErr_SetString(PyExc_ValueError, "mask must have one byte per weight and keys one item per block");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    block_mask_apply_f32((unsigned char *)w.buf, (unsigned char *)mask.buf, (const unsigned char *)keys.buf,
                         (Py_ssize_t)g[0], (Py_ssize_t)g[1], (Py_ssize_t)g[2], (Py_ssize_t)g[3], (uint32_t)t_key,
                         apply);
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    res = Py_None;
done:
    release(&w);
    release(&mask);
    release(&keys);
    return res;
}

static PyObject *py_set_avx2(PyObject *self, PyObject *args)
{
    int flag;
    if (!PyArg_ParseTuple(args, "p", &flag))
        return NULL;
    int previous = allow_avx2;
    allow_avx2 = flag;
    return PyBool_FromLong(previous);
}

static PyObject *py_has_avx2(PyObject *self, PyObject *noargs)
{
#ifdef HAVE_AVX2_PATH
    return PyBool_FromLong(__builtin_cpu_supports("avx2") != 0);
#else
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef methods[] = {
    {"set_avx2", py_set_avx2, METH_VARARGS, "set_avx2(flag) -> previous: allow the AVX2 stream (tests)"},
    {"has_avx2", py_has_avx2, METH_NOARGS, "has_avx2() -> whether the AVX2 stream can run here"},
    {"stream", py_stream, METH_VARARGS, "stream(keys, lo, hi, band_out) -> (n_le, n_band, max_key)"},
    {"stream_w", py_stream_w, METH_VARARGS,
     "stream_w(keys, ncols, w_int, w_last, lo, hi, band_out, band_w_out) -> (n_le, n_band, max_key)"},
    {"mask_apply", py_mask_apply, METH_VARARGS, "mask_apply(w, mask, t_key, apply) -> None"},
    {"apply", py_apply, METH_VARARGS, "apply(w, mask) -> None"},
    {"block_scores", py_block_scores, METH_VARARGS, "block_scores(w, rows, D, m, L, out) -> None"},
    {"block_mask_apply", py_block_mask_apply, METH_VARARGS,
     "block_mask_apply(w, mask, keys, rows, D, m, L, t_key, apply) -> None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "Single-pass kernels of the core.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__kernels(void)
{
#ifdef HAVE_AVX2_PATH
    init_pack_lut();
#endif
    return PyModule_Create(&module);
}
