/* Optional single-pass kernels for the numerical core (paddleslim_static.core.kernels wraps them).
 *
 * They compute exactly what the numpy code paths in selection.py / scores.py / engine.py compute, on the
 * same uint32 keys (float32 bit patterns with the sign bit cleared), in one pass instead of several:
 *
 *   stream(keys, lo, hi, band_out)      -> (count of keys <= lo, keys in (lo, hi] written to band_out, max key)
 *                                          (AVX2 version chosen at run time on x86-64, portable C otherwise)
 *   mask_apply(w, mask, t_key, apply)   -> mask = key(w) >= t_key; if apply: w *= mask
 *   apply(w, mask)                      -> w *= mask
 *
 * Arguments are C-contiguous buffers (numpy arrays): keys/band_out uint32, w float32, mask bool/uint8.
 * w * (float)mask is an IEEE multiply (no -ffast-math), so -0.0 and NaN come out as numpy's np.multiply gives them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(__clang__)
#define MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define MULTIVERSION
#endif

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define HAVE_AVX2_PATH 1
#include <immintrin.h>
#endif

#define BLOCK 32

/* The scalar loop both versions finish with (and the reference for what one key does). */
static uint32_t stream_tail(const uint32_t *bits, Py_ssize_t i, Py_ssize_t n, uint32_t lo, uint32_t hi, uint64_t le,
                            uint32_t mx, uint32_t *band, Py_ssize_t b, uint64_t *n_le, Py_ssize_t *nb)
{
    const uint32_t start = lo + 1u, width = hi - lo - 1u;
    for (; i < n; i++) {
        uint32_t k = bits[i] & 0x7FFFFFFFu;
        mx = k > mx ? k : mx;
        le += (k <= lo);
        if (hi > lo) {
            band[b] = k;
            b += ((uint32_t)(k - start) <= width);
        }
    }
    *n_le = le;
    *nb = b;
    return mx;
}

/* Portable version (any compiler/CPU): a vectorisable check per BLOCK keys, a scalar compaction for the rare
 * blocks that hold band keys. */
static uint32_t stream_portable(const uint32_t *bits, Py_ssize_t n, uint32_t lo, uint32_t hi, uint64_t *n_le,
                           uint32_t *band, Py_ssize_t *nb)
{
    uint64_t le = 0;
    Py_ssize_t b = 0, i = 0;
    uint32_t mx = 0;
    const uint32_t start = lo + 1u, width = hi - lo - 1u; /* (k - start) <= width  <=>  lo < k <= hi */
    const int has_band = hi > lo;
    for (; i + BLOCK <= n; i += BLOCK) {
        uint32_t any = 0, lec = 0, bmx = 0;
        for (int j = 0; j < BLOCK; j++) { /* vectorised: no stores */
            uint32_t k = bits[i + j] & 0x7FFFFFFFu;
            bmx = k > bmx ? k : bmx;
            lec += (k <= lo);
            any |= ((uint32_t)(k - start) <= width);
        }
        le += lec;
        mx = bmx > mx ? bmx : mx;
        if (any && has_band) { /* rare: ~1-2% of keys are in the band */
            for (int j = 0; j < BLOCK; j++) {
                uint32_t k = bits[i + j] & 0x7FFFFFFFu;
                band[b] = k;
                b += ((uint32_t)(k - start) <= width);
            }
        }
    }
    return stream_tail(bits, i, n, lo, hi, le, mx, band, b, n_le, nb);
}

#ifdef HAVE_AVX2_PATH
/* AVX2 version: 16 keys per step, unsigned compares via a sign flip, band keys found with movemask + ctz. */
__attribute__((target("avx2")))
static uint32_t stream_avx2(const uint32_t *bits, Py_ssize_t n, uint32_t lo, uint32_t hi, uint64_t *n_le,
                            uint32_t *band, Py_ssize_t *nb)
{
    const uint32_t start = lo + 1u, width = hi - lo - 1u;
    const int has_band = hi > lo;
    const __m256i ABS = _mm256_set1_epi32(0x7FFFFFFF), FLIP = _mm256_set1_epi32((int)0x80000000u);
    /* keys are <= 0x7F800000, so lo + 1 and width + 1 = hi - lo cannot overflow:
     * k <= lo  <=>  k < lo + 1;  (k - start) <= width  <=>  (k - start) < width + 1  (unsigned, via FLIP) */
    const __m256i LO1 = _mm256_set1_epi32((int)((lo + 1u) ^ 0x80000000u));
    const __m256i START = _mm256_set1_epi32((int)start);
    const __m256i WIDTH1 = _mm256_set1_epi32((int)((width + 1u) ^ 0x80000000u));
    __m256i vmx0 = _mm256_setzero_si256(), vmx1 = _mm256_setzero_si256();
    Py_ssize_t b = 0, i = 0;
    uint64_t le = 0;
    uint32_t t[8], mx = 0;
    while (i + 16 <= n) {
        Py_ssize_t end = i + ((n - i) & ~(Py_ssize_t)15);
        if (end - i > ((Py_ssize_t)1 << 24)) /* per-lane counters stay below 2^32 */
            end = i + ((Py_ssize_t)1 << 24);
        __m256i vle = _mm256_setzero_si256();
        for (; i < end; i += 16) {
            __m256i k0 = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(bits + i)), ABS);
            __m256i k1 = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(bits + i + 8)), ABS);
            vmx0 = _mm256_max_epu32(vmx0, k0);
            vmx1 = _mm256_max_epu32(vmx1, k1);
            vle = _mm256_sub_epi32(vle, _mm256_cmpgt_epi32(LO1, _mm256_xor_si256(k0, FLIP)));
            vle = _mm256_sub_epi32(vle, _mm256_cmpgt_epi32(LO1, _mm256_xor_si256(k1, FLIP)));
            if (!has_band)
                continue;
            __m256i b0 = _mm256_cmpgt_epi32(WIDTH1, _mm256_xor_si256(_mm256_sub_epi32(k0, START), FLIP));
            __m256i b1 = _mm256_cmpgt_epi32(WIDTH1, _mm256_xor_si256(_mm256_sub_epi32(k1, START), FLIP));
            unsigned m = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(b0)) |
                         ((unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(b1)) << 8);
            while (m) {
                band[b++] = bits[i + __builtin_ctz(m)] & 0x7FFFFFFFu;
                m &= m - 1;
            }
        }
        _mm256_storeu_si256((__m256i *)t, vle);
        for (int j = 0; j < 8; j++)
            le += t[j];
    }
    _mm256_storeu_si256((__m256i *)t, _mm256_max_epu32(vmx0, vmx1));
    for (int j = 0; j < 8; j++)
        mx = t[j] > mx ? t[j] : mx;
    return stream_tail(bits, i, n, lo, hi, le, mx, band, b, n_le, nb);
}
#endif

static int allow_avx2 = 1; /* tests switch it off to run the portable version on AVX2 machines */

static uint32_t stream_u32(const uint32_t *bits, Py_ssize_t n, uint32_t lo, uint32_t hi, uint64_t *n_le,
                           uint32_t *band, Py_ssize_t *nb)
{
#ifdef HAVE_AVX2_PATH
    if (allow_avx2 && __builtin_cpu_supports("avx2"))
        return stream_avx2(bits, n, lo, hi, n_le, band, nb);
#endif
    return stream_portable(bits, n, lo, hi, n_le, band, nb);
}

MULTIVERSION
static void mask_f32(const uint32_t *restrict bits, uint8_t *restrict mask, Py_ssize_t n, uint32_t t_key)
{
    for (Py_ssize_t i = 0; i < n; i++)
        mask[i] = (uint8_t)((bits[i] & 0x7FFFFFFFu) >= t_key);
}

MULTIVERSION
static void apply_f32(float *restrict w, const uint8_t *restrict mask, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) /* mask bytes are 0/1 (numpy bool): an IEEE multiply by 0.0f or 1.0f */
        w[i] = w[i] * (float)mask[i];
}

/* mask then apply, 4096 elements at a time so the second loop reads from L1 */
static void mask_apply_f32(float *w, uint8_t *mask, Py_ssize_t n, uint32_t t_key, int apply)
{
    for (Py_ssize_t a = 0; a < n; a += 4096) {
        Py_ssize_t m = n - a < 4096 ? n - a : 4096;
        mask_f32((const uint32_t *)(w + a), mask + a, m, t_key);
        if (apply)
            apply_f32(w + a, mask + a, m);
    }
}

static int check_items(Py_buffer *buf, Py_ssize_t itemsize, const char *what)
{
    if (buf->len % itemsize != 0) {
        PyErr_Format(PyExc_ValueError, "%s: buffer length %zd is not a multiple of %zd", what, buf->len, itemsize);
        return -1;
    }
    return 0;
}

static PyObject *py_stream(PyObject *self, PyObject *args)
{
    Py_buffer keys, band;
    unsigned long lo, hi;
    if (!PyArg_ParseTuple(args, "y*kkw*", &keys, &lo, &hi, &band))
        return NULL;
    PyObject *res = NULL;
    if (check_items(&keys, 4, "keys") < 0 || check_items(&band, 4, "band_out") < 0)
        goto done;
    if (band.len < keys.len) {
        PyErr_SetString(PyExc_ValueError, "band_out must be at least as long as keys");
        goto done;
    }
    if (lo > 0xFFFFFFFFul || hi > 0xFFFFFFFFul || hi < lo) {
        PyErr_SetString(PyExc_ValueError, "lo and hi must be uint32 keys with lo <= hi");
        goto done;
    }
    uint64_t n_le = 0;
    Py_ssize_t nb = 0;
    uint32_t mx;
    Py_BEGIN_ALLOW_THREADS
    mx = stream_u32((const uint32_t *)keys.buf, keys.len / 4, (uint32_t)lo, (uint32_t)hi, &n_le,
                    (uint32_t *)band.buf, &nb);
    Py_END_ALLOW_THREADS
    res = Py_BuildValue("KnK", (unsigned long long)n_le, nb, (unsigned long long)mx);
done:
    PyBuffer_Release(&keys);
    PyBuffer_Release(&band);
    return res;
}

/* mask_apply(w, mask, t_key, apply) and apply(w, mask): one float32 buffer and one byte per weight. */
static PyObject *weights_and_mask(PyObject *args, int with_threshold)
{
    Py_buffer w, mask;
    unsigned long t_key = 0;
    int apply = 1;
    int ok = with_threshold ? PyArg_ParseTuple(args, "w*w*kp", &w, &mask, &t_key, &apply)
                            : PyArg_ParseTuple(args, "w*y*", &w, &mask);
    if (!ok)
        return NULL;
    PyObject *res = NULL;
    if (check_items(&w, 4, "w") < 0)
        goto done;
    if (mask.len != w.len / 4) {
        PyErr_SetString(PyExc_ValueError, "mask must have one byte per float32 weight");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    if (with_threshold)
        mask_apply_f32((float *)w.buf, (uint8_t *)mask.buf, mask.len, (uint32_t)t_key, apply);
    else
        apply_f32((float *)w.buf, (const uint8_t *)mask.buf, mask.len);
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    res = Py_None;
done:
    PyBuffer_Release(&w);
    PyBuffer_Release(&mask);
    return res;
}

static PyObject *py_mask_apply(PyObject *self, PyObject *args) { return weights_and_mask(args, 1); }

static PyObject *py_apply(PyObject *self, PyObject *args) { return weights_and_mask(args, 0); }

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
    {"mask_apply", py_mask_apply, METH_VARARGS, "mask_apply(w, mask, t_key, apply) -> None"},
    {"apply", py_apply, METH_VARARGS, "apply(w, mask) -> None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "Single-pass kernels of the core.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
