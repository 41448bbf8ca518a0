/* Optional single-pass kernels for the numerical core (paddleslim_static.core.kernels wraps them).
 *
 * They compute exactly what the numpy code paths in selection.py / scores.py / engine.py compute, on the
 * same uint32 keys (float32 bit patterns with the sign bit cleared), in one pass instead of several:
 *
 *   stream(keys, lo, hi, band_out)      -> (count of keys <= lo, keys in (lo, hi] written to band_out, max key)
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

#define BLOCK 32

MULTIVERSION
static uint32_t stream_u32(const uint32_t *bits, Py_ssize_t n, uint32_t lo, uint32_t hi, uint64_t *n_le,
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
    for (; i < n; i++) {
        uint32_t k = bits[i] & 0x7FFFFFFFu;
        mx = k > mx ? k : mx;
        le += (k <= lo);
        if (has_band) {
            band[b] = k;
            b += ((uint32_t)(k - start) <= width);
        }
    }
    *n_le = le;
    *nb = b;
    return mx;
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

static PyObject *py_mask_apply(PyObject *self, PyObject *args)
{
    Py_buffer w, mask;
    unsigned long t_key;
    int apply;
    if (!PyArg_ParseTuple(args, "w*w*kp", &w, &mask, &t_key, &apply))
        return NULL;
    PyObject *res = NULL;
    if (check_items(&w, 4, "w") < 0)
        goto done;
    if (mask.len != w.len / 4) {
        PyErr_SetString(PyExc_ValueError, "mask must have one byte per float32 weight");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    mask_apply_f32((float *)w.buf, (uint8_t *)mask.buf, mask.len, (uint32_t)t_key, apply);
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    res = Py_None;
done:
    PyBuffer_Release(&w);
    PyBuffer_Release(&mask);
    return res;
}

static PyObject *py_apply(PyObject *self, PyObject *args)
{
    Py_buffer w, mask;
    if (!PyArg_ParseTuple(args, "w*y*", &w, &mask))
        return NULL;
    PyObject *res = NULL;
    if (check_items(&w, 4, "w") < 0)
        goto done;
    if (mask.len != w.len / 4) {
        PyErr_SetString(PyExc_ValueError, "mask must have one byte per float32 weight");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    apply_f32((float *)w.buf, (const uint8_t *)mask.buf, mask.len);
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    res = Py_None;
done:
    PyBuffer_Release(&w);
    PyBuffer_Release(&mask);
    return res;
}

static PyMethodDef methods[] = {
    {"stream", py_stream, METH_VARARGS, "stream(keys, lo, hi, band_out) -> (n_le, n_band, max_key)"},
    {"mask_apply", py_mask_apply, METH_VARARGS, "mask_apply(w, mask, t_key, apply) -> None"},
    {"apply", py_apply, METH_VARARGS, "apply(w, mask) -> None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "Single-pass kernels of the core.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
