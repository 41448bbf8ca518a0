// Sparse x dense kernels, compiled once per instruction set (see sparse_ops.cc, which includes this file inside
// a namespace under `#pragma GCC target`). No includes here: the includer provides <cstdint> and <cstring>.
//
// W is stored as CSR over output rows: row o holds the input indices cols[rp[o] .. rp[o+1]) and their values.
//   spmv:  y[o]       = bias[o] + sum_k vals[k] * x[cols[k]]                 (one input vector)
//   spmm:  Y[o, 0:P)  = bias[o] + sum_k vals[k] * X[cols[k], 0:P)            (P columns; row stride ldx / ldy)
// Both use several independent accumulators: one FMA chain per accumulator would leave the FMA units idle for
// its latency (4 cycles), so a row's nonzeros are spread over 8 partial sums and added at the end.

typedef float vf __attribute__((vector_size(PSL_VBYTES)));
typedef float vf4 __attribute__((vector_size(16)));  // narrow panels: batches of 2-4 do not pay for 16 lanes
constexpr int VL = PSL_VBYTES / 4;  // floats per vector

template <typename V>
static inline V load(const float* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V>
static inline void store(float* p, V v) { __builtin_memcpy(p, &v, sizeof(V)); }

#if defined(PSL_GATHER512)
template <typename Idx>
static inline __m512i load_idx16(const Idx* p, __mmask16 m) {
  if (sizeof(Idx) == 2) return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
  return _mm512_maskz_loadu_epi32(m, p);
}

// AVX-512: 16 gathered inputs per instruction, two chains, a masked last group (no scalar tail); the nonzeros
// stream is prefetched ~2 KiB ahead (it is the one thing this loop waits for).
template <typename Idx>
static void spmv_rows(const int32_t* rp, const Idx* cols, const float* vals, const float* bias, const float* x,
                      float* y, int64_t r0, int64_t r1) {
  for (int64_t o = r0; o < r1; ++o) {
    int64_t k = rp[o];
    const int64_t end = rp[o + 1];
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    for (; k + 32 <= end; k += 32) {
      _mm_prefetch(reinterpret_cast<const char*>(vals + k + 512), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(cols + k + 512), _MM_HINT_T0);
      const __m512i i0 = load_idx16(cols + k, 0xFFFF), i1 = load_idx16(cols + k + 16, 0xFFFF);
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(vals + k), _mm512_i32gather_ps(i0, x, 4), a0);
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(vals + k + 16), _mm512_i32gather_ps(i1, x, 4), a1);
    }
    for (; k < end; k += 16) {
      const __mmask16 m = end - k >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (end - k)) - 1);
      const __m512 xv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, load_idx16(cols + k, m), x, 4);
      a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, vals + k), xv, a0);
    }
    y[o] = bias[o] + _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
  }
}
#else
// Scalar loads with 8 partial sums: faster than compiler-generated 8-lane gathers on the machines measured.
template <typename Idx>
static void spmv_rows(const int32_t* rp, const Idx* cols, const float* vals, const float* bias, const float* x,
                      float* y, int64_t r0, int64_t r1) {
  for (int64_t o = r0; o < r1; ++o) {
    int64_t k = rp[o];
    const int64_t end = rp[o + 1];
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f, s4 = 0.f, s5 = 0.f, s6 = 0.f, s7 = 0.f;
    for (; k + 8 <= end; k += 8) {
      s0 += vals[k] * x[cols[k]];
      s1 += vals[k + 1] * x[cols[k + 1]];
      s2 += vals[k + 2] * x[cols[k + 2]];
      s3 += vals[k + 3] * x[cols[k + 3]];
      s4 += vals[k + 4] * x[cols[k + 4]];
      s5 += vals[k + 5] * x[cols[k + 5]];
      s6 += vals[k + 6] * x[cols[k + 6]];
      s7 += vals[k + 7] * x[cols[k + 7]];
    }
    for (; k < end; ++k) s0 += vals[k] * x[cols[k]];
    y[o] = bias[o] + (((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)));
  }
}
#endif

// Y[o, 0:NV*VL) for rows [r0, r1): a panel of NV vectors per row, U nonzeros in flight (NV * U accumulators).
template <typename V, typename Idx, int NV, int U>
static void spmm_panel(const int32_t* rp, const Idx* cols, const float* vals, const float* bias, const float* X,
                       int64_t ldx, float* Y, int64_t ldy, int64_t r0, int64_t r1) {
  for (int64_t o = r0; o < r1; ++o) {
    constexpr int L = sizeof(V) / 4;
    V acc[U][NV];
    for (int u = 0; u < U; ++u)
      for (int v = 0; v < NV; ++v) acc[u][v] = V{};
    int64_t k = rp[o];
    const int64_t end = rp[o + 1];
    for (; k + U <= end; k += U) {
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) {
        const float* xr = X + static_cast<int64_t>(cols[k + u]) * ldx;
        const V w = vals[k + u] + V{};
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[u][v] += w * load<V>(xr + v * L);
      }
    }
    for (; k < end; ++k) {
      const float* xr = X + static_cast<int64_t>(cols[k]) * ldx;
      const V w = vals[k] + V{};
      for (int v = 0; v < NV; ++v) acc[0][v] += w * load<V>(xr + v * L);
    }
    for (int v = 0; v < NV; ++v) {
      V s = bias[o] + V{};
      for (int u = 0; u < U; ++u) s += acc[u][v];
      store<V>(Y + o * ldy + v * L, s);
    }
  }
}

// P columns of X with row stride ldx into Y with row stride ldy, rows [r0, r1). P is a multiple of VL, or P == 4
// (batches of 2-4, one 4-lane vector). Panels of 4 vectors with 2 nonzeros in flight, then single vectors with 8.
template <typename Idx>
static void spmm_rows(const int32_t* rp, const Idx* cols, const float* vals, const float* bias, const float* X,
                      int64_t ldx, float* Y, int64_t ldy, int64_t P, int64_t r0, int64_t r1) {
  if (P == 4 && VL != 4) {
    spmm_panel<vf4, Idx, 1, 8>(rp, cols, vals, bias, X, ldx, Y, ldy, r0, r1);
    return;
  }
  int64_t c = 0;
  for (; c + 4 * VL <= P; c += 4 * VL)
    spmm_panel<vf, Idx, 4, 2>(rp, cols, vals, bias, X + c, ldx, Y + c, ldy, r0, r1);
  for (; c < P; c += VL) spmm_panel<vf, Idx, 1, 8>(rp, cols, vals, bias, X + c, ldx, Y + c, ldy, r0, r1);
}
