// paddleslim_sparse_linear / paddleslim_sparse_conv1x1: y = x @ W (+ bias) with W in CSR over output rows, as Paddle
// custom operators (CPU, float32, inference). One library holds the kernels for three instruction sets and picks one
// per process from the CPU (PADDLESLIM_SPARSE_ISA=portable|avx2|avx512 overrides, for tests).
// Threads: the parallel regions run on Paddle's own OpenMP runtime, found with dlsym (linking a second OpenMP runtime
// made everything slower), with as many threads as Paddle set for the calling thread (a predictor's
// set_cpu_math_library_num_threads); paddleslim_sparse_set_num_threads() forces a count.
#include <dlfcn.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "paddle/extension.h"
#include "paddle/phi/core/dense_tensor.h"

// Paddle Inference with oneDNN hands a custom operator its input in oneDNN's blocked layout when the producer was a
// oneDNN kernel (it inserts no reorder for custom kernels). This function of Paddle's (exported by libphi_core, the
// one Paddle Inference itself uses for the reorder) gives the plain NCHW tensor back.
namespace phi {
namespace funcs {
void TransDataLayoutFromOneDNN(common::DataLayout in_layout, common::DataLayout out_layout, const DenseTensor& in,
                               DenseTensor* out, Place place, bool always_copy);
}  // namespace funcs
}  // namespace phi

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,bmi2")
namespace isa_avx512 {
#define PSL_VBYTES 64
#define PSL_GATHER512 1
#include "spmm_impl.h"
#undef PSL_GATHER512
#undef PSL_VBYTES
}  // namespace isa_avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi2")
namespace isa_avx2 {
#define PSL_VBYTES 32
#include "spmm_impl.h"
#undef PSL_VBYTES
}  // namespace isa_avx2
#pragma GCC pop_options

namespace isa_portable {
#define PSL_VBYTES 16
#include "spmm_impl.h"
#undef PSL_VBYTES
}  // namespace isa_portable

namespace {

template <typename Idx>
struct Kernels {
  void (*spmv)(const int32_t*, const Idx*, const float*, const float*, const float*, float*, int64_t, int64_t);
  void (*spmm)(const int32_t*, const Idx*, const float*, const float*, const float*, int64_t, float*, int64_t,
               int64_t, int64_t, int64_t);
};

struct Isa {
  const char* name;
  int vl;
  Kernels<uint16_t> k16;
  Kernels<int32_t> k32;
};

#define PSL_ISA(ns, label)                                                              \
  Isa {                                                                                 \
    label, ns::VL, {ns::spmv_rows<uint16_t>, ns::spmm_rows<uint16_t>}, {                \
      ns::spmv_rows<int32_t>, ns::spmm_rows<int32_t>                                    \
    }                                                                                   \
  }

const Isa kIsas[] = {PSL_ISA(isa_portable, "portable"), PSL_ISA(isa_avx2, "avx2"), PSL_ISA(isa_avx512, "avx512")};

const Isa& pick_isa() {
  const char* forced = std::getenv("PADDLESLIM_SPARSE_ISA");
  __builtin_cpu_init();
  const bool has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  const bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (forced && *forced) {
    std::string f(forced);
    if (f == "avx512" && has512) return kIsas[2];
    if (f == "avx2" && has2) return kIsas[1];
    if (f == "portable") return kIsas[0];
  }
  return has512 ? kIsas[2] : has2 ? kIsas[1] : kIsas[0];
}

const Isa& isa() {
  static const Isa& chosen = pick_isa();
  return chosen;
}

std::atomic<int> g_threads{0};  // 0: follow Paddle's thread setting (see threads_for_call)
std::atomic<int> g_last_threads{0};

// Paddle's own OpenMP runtime (libiomp5, loaded with libpaddle.so), looked up in libpaddle.so's dependencies with
// dlsym: no link to any OpenMP, because a second OpenMP runtime in the process made everything slower (its threads
// and Paddle's spin against each other). Its thread pool is the one Paddle's dense operators just used.
struct OpenMP {
  int (*max_threads)() = nullptr;
  int (*thread_num)() = nullptr;
  void (*parallel)(void (*)(void*), void*, unsigned, unsigned) = nullptr;  // the GOMP ABI libiomp5 also serves
};

const OpenMP& openmp() {
  static const OpenMP api = [] {
    OpenMP a;
    void* h = dlopen("libpaddle.so", RTLD_NOLOAD | RTLD_LAZY);
    if (h) {
      a.max_threads = reinterpret_cast<int (*)()>(dlsym(h, "omp_get_max_threads"));
      a.thread_num = reinterpret_cast<int (*)()>(dlsym(h, "omp_get_thread_num"));
      a.parallel = reinterpret_cast<void (*)(void (*)(void*), void*, unsigned, unsigned)>(dlsym(h, "GOMP_parallel"));
    }
    if (!a.max_threads || !a.thread_num || !a.parallel) a = OpenMP();
    return a;
  }();
  return api;
}

// The thread count Paddle set for the calling thread: Paddle Inference applies the predictor's
// set_cpu_math_library_num_threads() before it runs the program; eager Paddle follows OMP_NUM_THREADS.
int threads_for_call() {
  const int forced = g_threads.load(std::memory_order_relaxed);
  if (forced > 0) return forced;
  return openmp().max_threads ? std::max(1, openmp().max_threads()) : 1;
}

// Row ranges handed out one at a time: a thread that was descheduled (a busy core) does not hold the others up.
struct Chunks {
  std::vector<int64_t> cut;  // chunk c is rows [cut[c], cut[c + 1])
  std::atomic<size_t> next{0};
  const std::function<void(int64_t, int64_t)>* fn = nullptr;
  void work() {
    for (size_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) + 1 < cut.size();) (*fn)(cut[c], cut[c + 1]);
  }
  static void run(void* self) { static_cast<Chunks*>(self)->work(); }
};

// Rows [0, rows) on threads_for_call() threads, in ~8 chunks per thread of about equal nonzeros (+ a row's fixed
// cost); small calls stay on the calling thread.
void parallel_rows(const int32_t* rp, int64_t rows, int64_t work_per_nnz,
                   const std::function<void(int64_t, int64_t)>& fn) {
  const int64_t nnz = rp[rows];
  int parts = threads_for_call();
  // below ~256k multiply-adds per thread, starting a parallel region costs about what it saves
  const int64_t work = (nnz + rows) * std::max<int64_t>(1, work_per_nnz);
  parts = static_cast<int>(std::min<int64_t>(parts, std::max<int64_t>(1, work / 262144)));
  g_last_threads.store(parts, std::memory_order_relaxed);
  if (parts <= 1) {
    fn(0, rows);
    return;
  }
  const int64_t n_chunks = std::min<int64_t>(rows, 8 * parts);
  Chunks chunks;
  chunks.fn = &fn;
  chunks.cut.assign(n_chunks + 1, rows);
  chunks.cut[0] = 0;
  for (int64_t c = 1; c < n_chunks; ++c) {
    const int64_t target = (nnz + rows) * c / n_chunks;  // cost of rows [0, r) is rp[r] + r
    int64_t lo = chunks.cut[c - 1], hi = rows;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (rp[mid] + mid < target) lo = mid + 1; else hi = mid;
    }
    chunks.cut[c] = lo;
  }
  if (openmp().parallel) {
    openmp().parallel(&Chunks::run, &chunks, static_cast<unsigned>(parts), 0);
    return;
  }
  std::vector<std::thread> pool;  // no OpenMP runtime in the process: plain threads
  for (int p = 1; p < parts; ++p) pool.emplace_back([&chunks] { chunks.work(); });
  chunks.work();
  for (auto& t : pool) t.join();
}

void check_csr(const paddle::Tensor& row_ptr, const paddle::Tensor& cols, const paddle::Tensor& values,
               const paddle::Tensor& bias, int64_t in_features) {
  PD_CHECK(row_ptr.dtype() == paddle::DataType::INT32, "row_ptr must be int32");
  PD_CHECK(values.dtype() == paddle::DataType::FLOAT32, "values must be float32");
  PD_CHECK(bias.dtype() == paddle::DataType::FLOAT32, "bias must be float32");
  PD_CHECK(cols.dtype() == paddle::DataType::INT16 || cols.dtype() == paddle::DataType::INT32,
           "cols must be int16 (in_features <= 65536, read as unsigned) or int32");
  PD_CHECK(cols.numel() == values.numel(), "cols and values differ in length");
  const int64_t rows = row_ptr.numel() - 1;
  PD_CHECK(rows >= 1 && bias.numel() == rows, "bias must have one value per output row");
  const int32_t* rp = row_ptr.data<int32_t>();
  PD_CHECK(rp[0] == 0 && rp[rows] == values.numel(), "row_ptr does not match values");
  PD_CHECK(in_features >= 1, "in_features must be >= 1");
}

// Y[o, 0:P) = bias + W X for one column block of width P (a multiple of the ISA's vector length) or a vector.
template <typename Idx>
void run(const Kernels<Idx>& k, const paddle::Tensor& row_ptr, const paddle::Tensor& cols,
         const paddle::Tensor& values, const paddle::Tensor& bias, const float* X, int64_t ldx, float* Y,
         int64_t ldy, int64_t P) {
  const int32_t* rp = row_ptr.data<int32_t>();
  const Idx* c = reinterpret_cast<const Idx*>(cols.data());
  const float* v = values.data<float>();
  const float* b = bias.data<float>();
  const int64_t rows = row_ptr.numel() - 1;
  if (P == 0) {  // one vector: x is X, y is Y
    parallel_rows(rp, rows, 1, [&](int64_t r0, int64_t r1) { k.spmv(rp, c, v, b, X, Y, r0, r1); });
  } else {
    parallel_rows(rp, rows, P, [&](int64_t r0, int64_t r1) { k.spmm(rp, c, v, b, X, ldx, Y, ldy, P, r0, r1); });
  }
}

template <typename F>
void with_kernels(const paddle::Tensor& cols, F&& fn) {
  if (cols.dtype() == paddle::DataType::INT16) fn(isa().k16); else fn(isa().k32);
}

// x in a plain layout: itself, or a reordered copy when it arrives in oneDNN's internal layout.
paddle::Tensor plain(const paddle::Tensor& x, common::DataLayout want) {
  if (x.layout() != common::DataLayout::ONEDNN) return x;
  auto dense = std::static_pointer_cast<phi::DenseTensor>(x.impl());
  auto out = std::make_shared<phi::DenseTensor>();
  phi::funcs::TransDataLayoutFromOneDNN(common::DataLayout::ONEDNN, want, *dense, out.get(), phi::CPUPlace(), true);
  return paddle::Tensor(out);
}

constexpr int64_t kLinearBlock = 64;  // batch rows per packed block: X^T block of in x 64 floats stays in L2

std::vector<paddle::Tensor> SparseLinear(const paddle::Tensor& x_in, const paddle::Tensor& row_ptr,
                                         const paddle::Tensor& cols, const paddle::Tensor& values,
                                         const paddle::Tensor& bias, int64_t in_features) {
  PD_CHECK(x_in.is_cpu(), "paddleslim_sparse_linear runs on the CPU only");
  const paddle::Tensor x = plain(x_in, common::DataLayout::NCHW);  // plain row-major, whatever the rank
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32, "paddleslim_sparse_linear takes float32 inputs");
  check_csr(row_ptr, cols, values, bias, in_features);
  auto shape = x.shape();
  PD_CHECK(!shape.empty() && shape.back() == in_features, "the last dimension of x must be in_features");
  const int64_t in = in_features, out = row_ptr.numel() - 1;
  const int64_t batch = x.numel() / in;
  shape.back() = out;
  auto y = paddle::empty(shape, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* xd = x.data<float>();
  float* yd = y.data<float>();
  if (batch == 0) return {y};
  const int vl = isa().vl;
  with_kernels(cols, [&](const auto& k) {
    if (batch == 1) {
      run(k, row_ptr, cols, values, bias, xd, 0, yd, 0, 0);
      return;
    }
    // X^T blocks of width pw (batch rounded up to vectors, zero-padded) and Y^T blocks, transposed back
    std::vector<float> xt, yt;
    for (int64_t b0 = 0; b0 < batch; b0 += kLinearBlock) {
      const int64_t nb = std::min(kLinearBlock, batch - b0);
      const int64_t pw = nb <= 4 ? 4 : (nb + vl - 1) / vl * vl;
      xt.assign(static_cast<size_t>(in * pw), 0.f);
      yt.resize(static_cast<size_t>(out * pw));
      for (int64_t j = 0; j < nb; ++j) {
        const float* xr = xd + (b0 + j) * in;
        for (int64_t i = 0; i < in; ++i) xt[i * pw + j] = xr[i];
      }
      run(k, row_ptr, cols, values, bias, xt.data(), pw, yt.data(), pw, pw);
      for (int64_t j = 0; j < nb; ++j) {
        float* yr = yd + (b0 + j) * out;
        for (int64_t o = 0; o < out; ++o) yr[o] = yt[o * pw + j];
      }
    }
  });
  return {y};
}

std::vector<paddle::Tensor> SparseConv1x1(const paddle::Tensor& x_in, const paddle::Tensor& row_ptr,
                                          const paddle::Tensor& cols, const paddle::Tensor& values,
                                          const paddle::Tensor& bias, int64_t in_features) {
  PD_CHECK(x_in.is_cpu(), "paddleslim_sparse_conv1x1 runs on the CPU only");
  const paddle::Tensor x = plain(x_in, common::DataLayout::NCHW);
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32, "paddleslim_sparse_conv1x1 takes float32 inputs");
  check_csr(row_ptr, cols, values, bias, in_features);
  auto shape = x.shape();
  PD_CHECK(shape.size() == 4 && shape[1] == in_features, "x must be NCHW with C == in_features");
  const int64_t n = shape[0], in = in_features, out = row_ptr.numel() - 1, hw = shape[2] * shape[3];
  shape[1] = out;
  auto y = paddle::empty(shape, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* xd = x.data<float>();
  float* yd = y.data<float>();
  if (n == 0 || hw == 0) return {y};
  const int vl = isa().vl;
  const int64_t full = hw / vl * vl, tail = hw - full;
  with_kernels(cols, [&](const auto& k) {
    std::vector<float> xp, yp;
    if (tail) {
      xp.assign(static_cast<size_t>(in * vl), 0.f);
      yp.resize(static_cast<size_t>(out * vl));
    }
    for (int64_t img = 0; img < n; ++img) {
      const float* xi = xd + img * in * hw;
      float* yi = yd + img * out * hw;
      if (full) run(k, row_ptr, cols, values, bias, xi, hw, yi, hw, full);
      if (tail) {  // the last hw % vl pixels through a zero-padded panel of one vector
        for (int64_t i = 0; i < in; ++i) std::memcpy(&xp[i * vl], xi + i * hw + full, tail * sizeof(float));
        run(k, row_ptr, cols, values, bias, xp.data(), vl, yp.data(), vl, vl);
        for (int64_t o = 0; o < out; ++o) std::memcpy(yi + o * hw + full, &yp[o * vl], tail * sizeof(float));
      }
    }
  });
  return {y};
}

std::vector<std::vector<int64_t>> LinearShape(const std::vector<int64_t>& x, const std::vector<int64_t>& row_ptr,
                                              const std::vector<int64_t>&, const std::vector<int64_t>&,
                                              const std::vector<int64_t>&, int64_t) {
  std::vector<int64_t> y = x;
  y.back() = row_ptr[0] < 0 ? -1 : row_ptr[0] - 1;
  return {y};
}

std::vector<std::vector<int64_t>> Conv1x1Shape(const std::vector<int64_t>& x, const std::vector<int64_t>& row_ptr,
                                               const std::vector<int64_t>&, const std::vector<int64_t>&,
                                               const std::vector<int64_t>&, int64_t) {
  std::vector<int64_t> y = x;
  y[1] = row_ptr[0] < 0 ? -1 : row_ptr[0] - 1;
  return {y};
}

std::vector<paddle::DataType> Float32Out(const paddle::DataType&, const paddle::DataType&, const paddle::DataType&,
                                         const paddle::DataType&, const paddle::DataType&) {
  return {paddle::DataType::FLOAT32};
}

}  // namespace

PD_BUILD_OP(paddleslim_sparse_linear)
    .Inputs({"X", "RowPtr", "Cols", "Values", "Bias"})
    .Outputs({"Out"})
    .Attrs({"in_features: int64_t"})
    .SetKernelFn(PD_KERNEL(SparseLinear))
    .SetInferShapeFn(PD_INFER_SHAPE(LinearShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(Float32Out));

PD_BUILD_OP(paddleslim_sparse_conv1x1)
    .Inputs({"X", "RowPtr", "Cols", "Values", "Bias"})
    .Outputs({"Out"})
    .Attrs({"in_features: int64_t"})
    .SetKernelFn(PD_KERNEL(SparseConv1x1))
    .SetInferShapeFn(PD_INFER_SHAPE(Conv1x1Shape))
    .SetInferDtypeFn(PD_INFER_DTYPE(Float32Out));

extern "C" {
// n >= 1: use n threads from now on; n == 0: follow Paddle's setting again (the default).
__attribute__((visibility("default"))) void paddleslim_sparse_set_num_threads(int n) {
  g_threads.store(n < 0 ? 0 : n, std::memory_order_relaxed);
}
__attribute__((visibility("default"))) int paddleslim_sparse_num_threads() { return g_threads.load(); }
// Threads the last operator call used (after the small-work cut-off): what tests can observe.
__attribute__((visibility("default"))) int paddleslim_sparse_last_threads() { return g_last_threads.load(); }
__attribute__((visibility("default"))) const char* paddleslim_sparse_isa() { return isa().name; }
}
