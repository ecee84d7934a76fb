// CUDA kernels of samplewt_ops, torch-free.
//
// This header needs only the CUDA runtime and csrc/samplewt_math.h, so that
// `nvcc -c csrc/cuda/check_compile.cu` checks every kernel on a machine
// without torch (make nvcc-check). ops_cuda.cu turns at::Tensors into the
// plain argument blocks below and calls the launchers on the current stream.
//
// Semantics are those of the CPU kernels (csrc/cpu/loss_kernels_impl.h and
// the op layer csrc/cpu/ops_cpu.cpp); the per-element formulas are the
// shared templates of samplewt_math.h, evaluated through ScalarMath<acc_t>.
//
// Nothing here synchronises with the host. The mean's denominator is found
// on the device by a pre-pass kernel (per-block partial sums), which every
// block of the main kernel re-adds in a fixed order, so each row's gradient
// scale w_i / denominator is applied in the same pass that writes the
// gradient. Reductions use per-block partial sums in double and a final
// single-block kernel, again in a fixed order: results are deterministic.
//
// Row (softmax) kernels, by regime:
//   small C  (ceil(C/VW) <= 256): G = 1, 4 or 32 lanes per row, 256/G rows
//            per 256-thread block, grid-stride over row tiles.
//   large C  : one block (128/256/512 threads) per row, grid-stride over
//            rows; pass 1 keeps an online max / sum-exp per thread in
//            registers, pass 2 re-reads the row (streaming loads) and writes
//            the gradient with streaming stores.
//   split    : very long rows and too few rows to fill the GPU: each row is
//            cut into chunks; kernel A writes per-chunk (max, sum-exp,
//            linear sums) to a workspace, kernel B merges them and writes
//            the chunk's gradient, and a small kernel merges the per-chunk
//            gradient norms when statistics are requested.
// Loads are 128-bit when the row pointers and row strides are 16-byte
// aligned, scalar otherwise. Indexing of rows is 64-bit; N x C beyond 2^31
// elements works.
//
// Invalid class targets (outside [0, C) and not ignore_index) are never used
// to index memory: without validation, that row's loss is NaN, its gradient
// row is zero and its statistics are (NaN, 0, NaN). The mean's denominator
// counts the row as the reference does (weight of class 0), so the other
// rows keep their gradients while the reduced loss is NaN. This matches the
// pure-PyTorch reference (samplewt_ops/reference.py) and its autograd.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../samplewt_math.h"

namespace samplewt {
namespace cuda {

// ===========================================================================
// Public argument blocks (plain pointers, like csrc/cpu/kernel_args.h)

enum RowKind : int { kRowCrossEntropyIndex = 0, kRowCrossEntropyProb = 1, kRowFocal = 2 };

// Softmax losses over `rows` rows of `cols` classes. "acc" is float, or
// double for double inputs.
struct RowLossArgs {
  int kind = kRowCrossEntropyIndex;
  int reduction = kMean;  // samplewt::Reduction
  int64_t rows = 0, cols = 0;
  const void* input = nullptr;  // rows x cols, unit column stride, scalar_t
  int64_t ld_input = 0;
  void* grad = nullptr;  // rows x cols scalar_t or null; may equal input
  int64_t ld_grad = 0;
  const int64_t* target = nullptr;    // index targets (rows)
  const void* target_prob = nullptr;  // probability targets, scalar_t
  int64_t ld_target = 0;
  const void* class_weight = nullptr;   // acc (cols): class weight or focal alpha
  const void* sample_weight = nullptr;  // acc (rows) or null
  void* out = nullptr;   // scalar_t: (rows) for reduction none, else (1)
  float* stats = nullptr;  // (rows, 3) or null
  int64_t ignore_index = -100;
  double label_smoothing = 0.0;
  double gamma = 0.0;
  int num_sms = 132;  // multiprocessors of the device (sizes the grids)
};

// Element-wise losses over `samples` samples of `per_sample` contiguous
// elements each.
struct ElemLossArgs {
  int kind = kMSE;  // samplewt::ElemLoss
  int reduction = kMean;
  int64_t samples = 0, per_sample = 0;
  const void* input = nullptr;   // contiguous scalar_t
  const void* target = nullptr;  // contiguous scalar_t
  void* grad = nullptr;          // contiguous scalar_t or null
  // acc arrays: full (samples * per_sample) or one row of per_sample values.
  const void* weight = nullptr;
  bool weight_full = false;
  const void* pos_weight = nullptr;
  bool pos_weight_full = false;
  const void* sample_weight = nullptr;  // acc (samples) or null
  // mse/l1 with weight: the mean divides by sum(weight) (PyTorch).
  bool mean_over_weight = false;
  void* out = nullptr;     // scalar_t: input's numel for none, else (1)
  float* stats = nullptr;  // (samples, 3) or null
  double gamma = 2.0, alpha = 0.25, delta = 1.0;
  int num_sms = 132;
};

// ===========================================================================
// Device helpers

namespace detail {

constexpr unsigned kFullMask = 0xffffffffu;

template <typename T>
struct TypeInfo;

template <>
struct TypeInfo<float> {
  using acc = float;
  static __device__ __forceinline__ float to_acc(float v) { return v; }
  static __device__ __forceinline__ float from_acc(float v) { return v; }
  static __device__ __forceinline__ float from_double(double v) { return static_cast<float>(v); }
};

template <>
struct TypeInfo<double> {
  using acc = double;
  static __device__ __forceinline__ double to_acc(double v) { return v; }
  static __device__ __forceinline__ double from_acc(double v) { return v; }
  static __device__ __forceinline__ double from_double(double v) { return v; }
};

template <>
struct TypeInfo<__half> {
  using acc = float;
  static __device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_acc(float v) { return __float2half_rn(v); }
  static __device__ __forceinline__ __half from_double(double v) {
    return __float2half_rn(static_cast<float>(v));
  }
};

template <>
struct TypeInfo<__nv_bfloat16> {
  using acc = float;
  static __device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_acc(float v) {
    return __float2bfloat16_rn(v);
  }
  static __device__ __forceinline__ __nv_bfloat16 from_double(double v) {
    return __float2bfloat16_rn(static_cast<float>(v));
  }
};

template <typename T>
using AccT = typename TypeInfo<T>::acc;

// Elements of T in one 128-bit access.
template <typename T>
struct Vec16 {
  static constexpr int value = static_cast<int>(16 / sizeof(T));
};

template <typename A>
__device__ __forceinline__ A neg_inf();
template <>
__device__ __forceinline__ float neg_inf<float>() {
  return __int_as_float(static_cast<int>(0xff800000u));
}
template <>
__device__ __forceinline__ double neg_inf<double>() {
  return __longlong_as_double(static_cast<long long>(0xfff0000000000000ull));
}

template <typename A>
__device__ __forceinline__ A quiet_nan();
template <>
__device__ __forceinline__ float quiet_nan<float>() {
  return __int_as_float(0x7fc00000);
}
template <>
__device__ __forceinline__ double quiet_nan<double>() {
  return __longlong_as_double(0x7ff8000000000000ll);
}

// --- 128-bit packs <-> accumulation values ---------------------------------

template <typename T>
struct Pack;

template <>
struct Pack<float> {
  static __device__ __forceinline__ void unpack(const uint4& u, float (&v)[4]) {
    v[0] = __uint_as_float(u.x);
    v[1] = __uint_as_float(u.y);
    v[2] = __uint_as_float(u.z);
    v[3] = __uint_as_float(u.w);
  }
  static __device__ __forceinline__ uint4 pack(const float (&v)[4]) {
    return make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]),
                      __float_as_uint(v[3]));
  }
};

template <>
struct Pack<double> {
  static __device__ __forceinline__ void unpack(const uint4& u, double (&v)[2]) {
    v[0] = __hiloint2double(static_cast<int>(u.y), static_cast<int>(u.x));
    v[1] = __hiloint2double(static_cast<int>(u.w), static_cast<int>(u.z));
  }
  static __device__ __forceinline__ uint4 pack(const double (&v)[2]) {
    return make_uint4(static_cast<unsigned>(__double2loint(v[0])),
                      static_cast<unsigned>(__double2hiint(v[0])),
                      static_cast<unsigned>(__double2loint(v[1])),
                      static_cast<unsigned>(__double2hiint(v[1])));
  }
};

template <>
struct Pack<__half> {
  static __device__ __forceinline__ void two(unsigned w, float& lo, float& hi) {
    lo = __half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xffffu)));
    hi = __half2float(__ushort_as_half(static_cast<unsigned short>(w >> 16)));
  }
  static __device__ __forceinline__ unsigned join(float lo, float hi) {
    return static_cast<unsigned>(__half_as_ushort(__float2half_rn(lo))) |
           (static_cast<unsigned>(__half_as_ushort(__float2half_rn(hi))) << 16);
  }
  static __device__ __forceinline__ void unpack(const uint4& u, float (&v)[8]) {
    two(u.x, v[0], v[1]);
    two(u.y, v[2], v[3]);
    two(u.z, v[4], v[5]);
    two(u.w, v[6], v[7]);
  }
  static __device__ __forceinline__ uint4 pack(const float (&v)[8]) {
    return make_uint4(join(v[0], v[1]), join(v[2], v[3]), join(v[4], v[5]), join(v[6], v[7]));
  }
};

template <>
struct Pack<__nv_bfloat16> {
  // bfloat16 -> float is exact: the 16 bits are the float's upper half.
  static __device__ __forceinline__ void two(unsigned w, float& lo, float& hi) {
    lo = __uint_as_float(w << 16);
    hi = __uint_as_float(w & 0xffff0000u);
  }
  static __device__ __forceinline__ unsigned join(float lo, float hi) {
    return static_cast<unsigned>(__bfloat16_as_ushort(__float2bfloat16_rn(lo))) |
           (static_cast<unsigned>(__bfloat16_as_ushort(__float2bfloat16_rn(hi))) << 16);
  }
  static __device__ __forceinline__ void unpack(const uint4& u, float (&v)[8]) {
    two(u.x, v[0], v[1]);
    two(u.y, v[2], v[3]);
    two(u.z, v[4], v[5]);
    two(u.w, v[6], v[7]);
  }
  static __device__ __forceinline__ uint4 pack(const float (&v)[8]) {
    return make_uint4(join(v[0], v[1]), join(v[2], v[3]), join(v[4], v[5]), join(v[6], v[7]));
  }
};

// Loads VW consecutive elements as acc values. VW is 1 (any alignment) or
// Vec16<T>::value (p 16-byte aligned). STREAM marks the last use of the data
// (cache-streaming, evict first).
template <typename T, int VW, bool STREAM = false>
__device__ __forceinline__ void load_acc(const T* p, AccT<T> (&v)[VW]) {
  if constexpr (VW == 1) {
    v[0] = TypeInfo<T>::to_acc(*p);
  } else {
    static_assert(VW * sizeof(T) == 16, "vector access must be 128-bit");
    const uint4* q = reinterpret_cast<const uint4*>(p);
    uint4 u;
    if constexpr (STREAM) {
      u = __ldcs(q);
    } else {
      u = *q;
    }
    Pack<T>::unpack(u, v);
  }
}

template <typename T, int VW>
__device__ __forceinline__ void store_acc(T* p, const AccT<T> (&v)[VW]) {
  if constexpr (VW == 1) {
    *p = TypeInfo<T>::from_acc(v[0]);
  } else {
    __stcs(reinterpret_cast<uint4*>(p), Pack<T>::pack(v));
  }
}

template <typename T, int VW>
__device__ __forceinline__ void store_zero(T* p) {
  if constexpr (VW == 1) {
    *p = TypeInfo<T>::from_acc(AccT<T>(0));
  } else {
    __stcs(reinterpret_cast<uint4*>(p), make_uint4(0u, 0u, 0u, 0u));
  }
}

// --- reductions --------------------------------------------------------------

// Sum over the G lanes of an aligned lane group (G a power of two <= 32).
// Every lane of the warp must call it (full mask); all lanes of a group get
// the same bits because the butterfly's additions are commutative.
template <int G, typename V>
__device__ __forceinline__ V group_sum(V v) {
#pragma unroll
  for (int o = G / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

template <int G, typename A>
__device__ __forceinline__ void group_merge_lse(A& m, A& s) {
#pragma unroll
  for (int o = G / 2; o > 0; o >>= 1) {
    const A m2 = __shfl_xor_sync(kFullMask, m, o);
    const A s2 = __shfl_xor_sync(kFullMask, s, o);
    lse_merge(m, s, m2, s2);
  }
}

// Sum over the block, returned to every thread in a fixed order (the same
// bits in every thread and run). sh needs 32 slots; it may be reused by the
// next call since the first barrier waits for earlier readers.
template <typename V>
__device__ __forceinline__ V block_sum(V v, V* sh) {
  v = group_sum<32>(v);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
  __syncthreads();
  const int nw = static_cast<int>((blockDim.x + 31) >> 5);
  V t = sh[0];
  for (int i = 1; i < nw; ++i) t += sh[i];
  return t;
}

// Block-wide merge of (max, sum-exp) and two plain sums; results to all.
template <typename A>
__device__ __forceinline__ void block_merge4(A& m, A& s, A& x1, A& x2, A (*sh)[32]) {
  group_merge_lse<32>(m, s);
  x1 = group_sum<32>(x1);
  x2 = group_sum<32>(x2);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) {
    const int w = threadIdx.x >> 5;
    sh[0][w] = m;
    sh[1][w] = s;
    sh[2][w] = x1;
    sh[3][w] = x2;
  }
  __syncthreads();
  const int nw = static_cast<int>((blockDim.x + 31) >> 5);
  m = sh[0][0];
  s = sh[1][0];
  x1 = sh[2][0];
  x2 = sh[3][0];
  for (int i = 1; i < nw; ++i) {
    lse_merge(m, s, sh[0][i], sh[1][i]);
    x1 += sh[2][i];
    x2 += sh[3][i];
  }
}

// The mean's denominator: the sum of the pre-pass's partials (in a fixed
// order), or a constant known on the host. Called by all threads.
__device__ __forceinline__ double block_denominator(const double* parts, int n, double c,
                                                    double* sh) {
  if (parts == nullptr) return c;
  double v = 0.0;
  for (int i = static_cast<int>(threadIdx.x); i < n; i += static_cast<int>(blockDim.x)) {
    v += parts[i];
  }
  return block_sum(v, sh);
}

// ===========================================================================
// Row (softmax) kernels

template <typename A>
struct RowParams {
  int64_t rows;
  int cols;
  const void* input;
  int64_t ld_input;
  void* grad;
  int64_t ld_grad;
  const int64_t* target;
  const void* target_prob;
  int64_t ld_target;
  const A* cw;
  const A* sw;
  int reduction;
  int64_t ignore_index;
  A q_scale;   // 1 - eps (probability targets)
  A q_shift;   // eps / C (probability targets), the smoothing share a_smooth
  A eps;
  A gamma;
  bool linear;  // the loss has the linear term sum_c a_c x_c
  void* out;
  float* stats;
  const double* denom_parts;
  int n_denom;
  double denom_const;
  double* loss_parts;
  // split regime
  int nch;      // chunks per row
  int chunk;    // elements per chunk (a multiple of the vector width)
  A* ws_part;   // (rows * nch, 4): max, sum-exp, sum a_c x_c, sum a_c
  A* ws_xy;     // (rows): x_y of index targets
  A* ws_stat;   // (rows * nch, 2): sum u^2, sum |p - q|
};

// What a row's target says, the same in every lane that handles the row.
template <typename A>
struct RowTarget {
  int64_t y;     // class index (index targets), or -1
  bool ignored;  // y == ignore_index
  bool invalid;  // y outside [0, C) and not ignored
  bool live;     // active, not ignored, not invalid
  A w;           // sample weight (1 without)
};

template <int KIND, typename A>
__device__ __forceinline__ RowTarget<A> row_target(const RowParams<A>& p, int64_t r, bool active) {
  RowTarget<A> t;
  t.y = -1;
  t.ignored = false;
  t.invalid = false;
  t.w = A(1);
  if (active) {
    if (KIND != kRowCrossEntropyProb) {
      t.y = p.target[r];
      t.ignored = t.y == p.ignore_index;
      t.invalid = !t.ignored && (t.y < 0 || t.y >= p.cols);
    }
    if (p.sw) t.w = p.sw[r];
  }
  t.live = active && !t.ignored && !t.invalid;
  return t;
}

// Coefficient of class c in the linear term: cw_c for index targets with
// label smoothing, cw_c ((1-eps) q_c + eps/C) for probability targets.
template <int KIND, typename A>
__device__ __forceinline__ A lin_coef(const RowParams<A>& p, int c, A qv) {
  if (KIND == kRowCrossEntropyProb) {
    const A qa = p.q_scale * qv + p.q_shift;
    return p.cw ? qa * p.cw[c] : qa;
  }
  return p.cw ? p.cw[c] : A(1);
}

// Online update of (m, s) with a block of values whose max is lm.
template <typename A>
__device__ __forceinline__ void online_rescale(A& m, A& s, A lm) {
  if (lm > m || lm != lm) {  // a NaN makes (m, s) NaN for good
    s = s * ScalarMath<A>::exp(m - lm);
    m = lm;
  }
}

template <typename A, int N>
__device__ __forceinline__ void online_add(A& m, A& s, const A (&v)[N]) {
  A lm = v[0];
#pragma unroll
  for (int k = 1; k < N; ++k) lm = ScalarMath<A>::max(lm, v[k]);
  online_rescale(m, s, lm);
  // m == -inf means every value so far is -inf: they add nothing (and
  // exp(-inf - -inf) would be NaN).
  if (m > neg_inf<A>()) {
#pragma unroll
    for (int k = 0; k < N; ++k) s += ScalarMath<A>::exp(v[k] - m);
  }
}

// Pass 1 of one thread over columns [c0, c1) of a row (c0 a multiple of VW):
// online max and sum-exp, and the linear sums when LIN.
template <typename T, int KIND, int VW, bool LIN>
__device__ __forceinline__ void row_pass1(const RowParams<AccT<T>>& p, const T* x, const T* q,
                                          int c0, int c1, int lane, int nthr, AccT<T>& m,
                                          AccT<T>& s, AccT<T>& ax, AccT<T>& as) {
  using A = AccT<T>;
  constexpr bool kProb = KIND == kRowCrossEntropyProb;
  const int nvec = (c1 - c0) / VW;
  int v = lane;
  // Two vectors in flight per thread (probability targets load x and q:
  // one vector of each).
  for (; !kProb && v + nthr < nvec; v += 2 * nthr) {
    const int ca = c0 + v * VW, cb = ca + nthr * VW;
    A xa[VW], xb[VW];
    load_acc<T, VW>(x + ca, xa);
    load_acc<T, VW>(x + cb, xb);
    A both[2 * VW];
#pragma unroll
    for (int k = 0; k < VW; ++k) {
      both[k] = xa[k];
      both[VW + k] = xb[k];
    }
    online_add(m, s, both);
    if (LIN) {
#pragma unroll
      for (int k = 0; k < VW; ++k) {
        const A a1 = lin_coef<KIND>(p, ca + k, A(0));
        const A a2 = lin_coef<KIND>(p, cb + k, A(0));
        ax += a1 * xa[k] + a2 * xb[k];
        as += a1 + a2;
      }
    }
  }
  for (; v < nvec; v += nthr) {
    const int ca = c0 + v * VW;
    A xa[VW];
    load_acc<T, VW>(x + ca, xa);
    online_add(m, s, xa);
    if (LIN) {
      A qa[VW];
      if (kProb) load_acc<T, VW>(q + ca, qa);
#pragma unroll
      for (int k = 0; k < VW; ++k) {
        const A a1 = lin_coef<KIND>(p, ca + k, kProb ? qa[k] : A(0));
        ax += a1 * xa[k];
        as += a1;
      }
    }
  }
  // Columns past the last full vector.
  for (int c = c0 + nvec * VW + lane; c < c1; c += nthr) {
    A xa[1];
    load_acc<T, 1>(x + c, xa);
    online_add(m, s, xa);
    if (LIN) {
      const A a1 = lin_coef<KIND>(p, c, kProb ? TypeInfo<T>::to_acc(q[c]) : A(0));
      ax += a1 * xa[0];
      as += a1;
    }
  }
}

// A row's loss and gradient coefficients (see samplewt_math.h).
template <typename A>
struct RowResult {
  A loss;      // without sample weight
  A lse;
  A A_;        // sum_c a_c
  A a_target;  // extra coefficient of the target class
  A scale;     // gradient factor: w (or w / denominator for the mean); 0 if dead
  A x_y;
};

template <int KIND, typename A>
__device__ __forceinline__ RowResult<A> row_result(const RowParams<A>& p, const RowTarget<A>& t,
                                                   A m, A s, A ax, A as, A x_y, double denom) {
  RowResult<A> r;
  r.lse = lse_finish(m, s);
  r.x_y = x_y;
  r.a_target = A(0);
  r.loss = A(0);
  r.A_ = A(0);
  if (t.live) {
    if (KIND == kRowCrossEntropyProb) {
      r.A_ = as;
      r.loss = r.lse * as - ax;
    } else if (KIND == kRowFocal) {
      const A alpha_y = p.cw ? p.cw[t.y] : A(1);
      const FocalRow<A> fr = focal_row<A>(x_y - r.lse, p.gamma, alpha_y);
      r.loss = fr.loss;
      r.A_ = r.a_target = alpha_y * fr.g;
    } else {
      const A cw_y = p.cw ? p.cw[t.y] : A(1);
      const A sum_cw = p.cw ? as : static_cast<A>(p.cols);
      const CERow<A> cr = ce_index_row<A>(r.lse, x_y, cw_y, p.eps, static_cast<A>(p.cols),
                                          sum_cw, p.linear ? ax : A(0));
      r.loss = cr.loss;
      r.A_ = cr.A;
      r.a_target = cr.a_target;
    }
  }
  A scale = t.live ? t.w : A(0);
  if (p.reduction == kMean && scale != A(0)) {
    scale = static_cast<A>(static_cast<double>(scale) / denom);
  }
  r.scale = scale;
  return r;
}

// Pass 2 of one thread over columns [c0, c1): u_j = A softmax_j - a_j (minus
// a_target at the target), the gradient u * scale, and the statistics sums.
template <typename T, int KIND, int VW, bool LIN>
__device__ __forceinline__ void row_pass2(const RowParams<AccT<T>>& p, const T* x, const T* q,
                                          T* g, int c0, int c1, int lane, int nthr,
                                          const RowResult<AccT<T>>& res, int64_t y,
                                          bool want_stats, AccT<T>& sq, AccT<T>& l1) {
  using A = AccT<T>;
  using M = ScalarMath<A>;
  constexpr bool kProb = KIND == kRowCrossEntropyProb;
  const A a_smooth = p.q_shift;
  auto body = [&](int c, A xv, A qv, A& gout) {
    A a = A(0);
    if (kProb) {
      a = lin_coef<KIND>(p, c, qv);
    } else if (KIND == kRowCrossEntropyIndex && LIN) {
      a = p.cw ? a_smooth * p.cw[c] : a_smooth;
    }
    A u = softmax_grad<M>(xv, res.lse, res.A_, a);
    if (!kProb && c == y) u -= res.a_target;
    if (want_stats) {
      sq += u * u;
      if (kProb) l1 += M::abs(M::exp(xv - res.lse) - qv);
    }
    gout = u * res.scale;
  };
  // Backwards through the row: its end, loaded last by pass 1, is the part
  // most likely still in L2.
  const int nvec = (c1 - c0) / VW;
  for (int c = c0 + nvec * VW + lane; c < c1; c += nthr) {
    A xa[1], ga[1];
    load_acc<T, 1>(x + c, xa);
    body(c, xa[0], kProb ? TypeInfo<T>::to_acc(q[c]) : A(0), ga[0]);
    if (g) store_acc<T, 1>(g + c, ga);
  }
  if (lane >= nvec) return;
  auto one_vector = [&](int v) {
    const int ca = c0 + v * VW;
    A xa[VW], qa[VW], ga[VW];
    load_acc<T, VW, true>(x + ca, xa);
    if (kProb) load_acc<T, VW, true>(q + ca, qa);
#pragma unroll
    for (int k = 0; k < VW; ++k) body(ca + k, xa[k], kProb ? qa[k] : A(0), ga[k]);
    if (g) store_acc<T, VW>(g + ca, ga);
  };
  int v = lane + ((nvec - 1 - lane) / nthr) * nthr;  // this thread's last vector
  if constexpr (kProb) {
    // Targets double the loads of a step already: one vector at a time.
    for (; v >= 0; v -= nthr) one_vector(v);
  } else {
    for (; v >= nthr; v -= 2 * nthr) {  // v and v - nthr, both >= lane
      const int ca = c0 + v * VW, cb = ca - nthr * VW;
      A xa[VW], xb[VW], ga[VW], gb[VW];
      load_acc<T, VW, true>(x + ca, xa);
      load_acc<T, VW, true>(x + cb, xb);
#pragma unroll
      for (int k = 0; k < VW; ++k) {
        body(ca + k, xa[k], A(0), ga[k]);
        body(cb + k, xb[k], A(0), gb[k]);
      }
      if (g) {
        store_acc<T, VW>(g + ca, ga);
        store_acc<T, VW>(g + cb, gb);
      }
    }
    if (v >= 0) one_vector(v);
  }
}

template <typename T, int VW>
__device__ __forceinline__ void zero_fill(T* g, int c0, int c1, int lane, int nthr) {
  const int nvec = (c1 - c0) / VW;
  for (int v = lane; v < nvec; v += nthr) store_zero<T, VW>(g + c0 + v * VW);
  for (int c = c0 + nvec * VW + lane; c < c1; c += nthr) store_zero<T, 1>(g + c);
}

// Writes a finished row's loss (or adds it to the block's total) and stats.
template <typename T, int KIND>
__device__ __forceinline__ void row_write(const RowParams<AccT<T>>& p, int64_t r,
                                          const RowTarget<AccT<T>>& t,
                                          const RowResult<AccT<T>>& res, AccT<T> sq, AccT<T> l1,
                                          bool write_stats_norm, double& total) {
  using A = AccT<T>;
  const A loss = t.ignored ? A(0) : (t.invalid ? quiet_nan<A>() : res.loss);
  if (p.reduction == kNone) {
    static_cast<T*>(p.out)[r] = TypeInfo<T>::from_acc(p.sw ? loss * t.w : loss);
  } else {
    total += p.sw ? static_cast<double>(t.w) * static_cast<double>(loss)
                  : static_cast<double>(loss);
  }
  if (p.stats) {
    float* st = p.stats + 3 * r;
    if (t.ignored) {
      st[0] = 0.f;
      st[2] = 0.f;
    } else if (t.invalid) {
      st[0] = static_cast<float>(quiet_nan<A>());
      st[2] = static_cast<float>(quiet_nan<A>());
    } else {
      st[0] = static_cast<float>(res.loss);
      if (KIND == kRowCrossEntropyProb) {
        if (write_stats_norm) st[2] = static_cast<float>(A(0.5) * l1);
      } else {
        st[2] = static_cast<float>(ghm_g_softmax<A>(res.x_y - res.lse));
      }
    }
    if (write_stats_norm) {
      st[1] = t.live ? static_cast<float>(ScalarMath<A>::sqrt(sq > A(0) ? sq : A(0))) : 0.f;
    }
  }
}

template <typename T>
__device__ __forceinline__ const T* row_ptr(const void* base, int64_t r, int64_t ld) {
  return static_cast<const T*>(base) + r * ld;
}

// --- small C: G lanes per row ----------------------------------------------

constexpr int kSmallBlock = 256;

// Minimum resident blocks per multiprocessor for __launch_bounds__: float
// accumulation is held to 64 registers (4 x 256 or 2 x 512 threads per SM,
// enough loads in flight to stream HBM); double kernels, which serve
// gradcheck rather than speed, may use 128+ registers instead of spilling.
template <typename T>
struct MinBlocks {
  static constexpr int k256 = sizeof(AccT<T>) == 8 ? 1 : 4;
  static constexpr int k512 = sizeof(AccT<T>) == 8 ? 1 : 2;
};

template <typename T, int KIND, int G, int VW>
__global__ void __launch_bounds__(kSmallBlock, MinBlocks<T>::k256)
    row_small_kernel(const RowParams<AccT<T>> p) {
  using A = AccT<T>;
  __shared__ double sh_d[32];
  const double denom = block_denominator(p.denom_parts, p.n_denom, p.denom_const, sh_d);
  constexpr int RPB = kSmallBlock / G;
  const int lane = static_cast<int>(threadIdx.x) % G;
  const int grp = static_cast<int>(threadIdx.x) / G;
  const int C = p.cols;
  const bool want_stats = p.stats != nullptr;
  double total = 0.0;
  // The trip count is the same for every thread of the block, so the lane
  // shuffles below always run with the whole warp converged.
  for (int64_t tile = blockIdx.x; tile * RPB < p.rows; tile += gridDim.x) {
    const int64_t r = tile * RPB + grp;
    const bool active = r < p.rows;
    const RowTarget<A> t = row_target<KIND>(p, r, active);
    const T* x = active ? row_ptr<T>(p.input, r, p.ld_input) : nullptr;
    const T* q = (KIND == kRowCrossEntropyProb && active)
                     ? row_ptr<T>(p.target_prob, r, p.ld_target)
                     : nullptr;
    T* g = (p.grad && active) ? static_cast<T*>(p.grad) + r * p.ld_grad : nullptr;
    A m = neg_inf<A>(), s = A(0), ax = A(0), as = A(0), x_y = A(0);
    if (t.live) {
      if (KIND != kRowCrossEntropyProb) x_y = TypeInfo<T>::to_acc(x[t.y]);
      if (p.linear) {
        row_pass1<T, KIND, VW, true>(p, x, q, 0, C, lane, G, m, s, ax, as);
      } else {
        row_pass1<T, KIND, VW, false>(p, x, q, 0, C, lane, G, m, s, ax, as);
      }
    }
    group_merge_lse<G>(m, s);
    if (p.linear) {
      ax = group_sum<G>(ax);
      as = group_sum<G>(as);
    }
    // Every read of the row (x_y included) precedes any gradient write: the
    // gradient may overwrite the logits.
    __syncwarp();
    const RowResult<A> res = row_result<KIND>(p, t, m, s, ax, as, x_y, denom);
    A sq = A(0), l1 = A(0);
    if (g || want_stats) {
      if (t.live) {
        if (p.linear) {
          row_pass2<T, KIND, VW, true>(p, x, q, g, 0, C, lane, G, res, t.y, want_stats, sq, l1);
        } else {
          row_pass2<T, KIND, VW, false>(p, x, q, g, 0, C, lane, G, res, t.y, want_stats, sq, l1);
        }
      } else if (g) {
        zero_fill<T, VW>(g, 0, C, lane, G);
      }
    }
    if (want_stats) {
      sq = group_sum<G>(sq);
      if (KIND == kRowCrossEntropyProb) l1 = group_sum<G>(l1);
    }
    if (active && lane == 0) row_write<T, KIND>(p, r, t, res, sq, l1, true, total);
  }
  if (p.loss_parts) {
    const double b = block_sum(total, sh_d);
    if (threadIdx.x == 0) p.loss_parts[blockIdx.x] = b;
  }
}

// --- large C: one block per row ---------------------------------------------

constexpr int kBigBlockMax = 512;

template <typename T, int KIND, int VW>
__global__ void __launch_bounds__(kBigBlockMax, MinBlocks<T>::k512)
    row_block_kernel(const RowParams<AccT<T>> p) {
  using A = AccT<T>;
  __shared__ double sh_d[32];
  __shared__ A sh[4][32];
  __shared__ double sh_denom;  // read where used: keeps registers for the row loops
  {
    const double d = block_denominator(p.denom_parts, p.n_denom, p.denom_const, sh_d);
    if (threadIdx.x == 0) sh_denom = d;
  }
  const int tid = static_cast<int>(threadIdx.x);
  const int nthr = static_cast<int>(blockDim.x);
  const int C = p.cols;
  const bool want_stats = p.stats != nullptr;
  double total = 0.0;
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const RowTarget<A> t = row_target<KIND>(p, r, true);
    const T* x = row_ptr<T>(p.input, r, p.ld_input);
    const T* q =
        KIND == kRowCrossEntropyProb ? row_ptr<T>(p.target_prob, r, p.ld_target) : nullptr;
    T* g = p.grad ? static_cast<T*>(p.grad) + r * p.ld_grad : nullptr;
    if (!t.live) {  // uniform over the block
      if (g) zero_fill<T, VW>(g, 0, C, tid, nthr);
      if (tid == 0) {
        RowResult<A> res{};
        row_write<T, KIND>(p, r, t, res, A(0), A(0), true, total);
      }
      continue;
    }
    A m = neg_inf<A>(), s = A(0), ax = A(0), as = A(0);
    const A x_y = KIND != kRowCrossEntropyProb ? TypeInfo<T>::to_acc(x[t.y]) : A(0);
    if (p.linear) {
      row_pass1<T, KIND, VW, true>(p, x, q, 0, C, tid, nthr, m, s, ax, as);
    } else {
      row_pass1<T, KIND, VW, false>(p, x, q, 0, C, tid, nthr, m, s, ax, as);
    }
    // Its barriers also order every read of the row before the writes.
    block_merge4(m, s, ax, as, sh);
    const RowResult<A> res = row_result<KIND>(p, t, m, s, ax, as, x_y, sh_denom);
    A sq = A(0), l1 = A(0);
    if (g || want_stats) {
      if (p.linear) {
        row_pass2<T, KIND, VW, true>(p, x, q, g, 0, C, tid, nthr, res, t.y, want_stats, sq, l1);
      } else {
        row_pass2<T, KIND, VW, false>(p, x, q, g, 0, C, tid, nthr, res, t.y, want_stats, sq,
                                      l1);
      }
      if (want_stats) {
        A dummy_m = A(0), dummy_s = A(0);
        // Reuses the 4-way reduction: sums of sq and l1 (the merge part is idle).
        block_merge4(dummy_m, dummy_s, sq, l1, sh);
      }
    }
    if (tid == 0) row_write<T, KIND>(p, r, t, res, sq, l1, true, total);
  }
  if (p.loss_parts && tid == 0) p.loss_parts[blockIdx.x] = total;
}

// --- split rows: chunks of one row on several blocks -------------------------

constexpr int kSplitBlock = 256;

template <typename T, int KIND, int VW>
__global__ void __launch_bounds__(kSplitBlock, MinBlocks<T>::k256)
    row_split_partial_kernel(const RowParams<AccT<T>> p) {
  using A = AccT<T>;
  __shared__ A sh[4][32];
  const int64_t b = blockIdx.x;
  const int64_t r = b / p.nch;
  const int k = static_cast<int>(b - r * p.nch);
  const int c0 = k * p.chunk;
  const int c1 = min(p.cols, c0 + p.chunk);
  const RowTarget<A> t = row_target<KIND>(p, r, true);
  A* part = p.ws_part + 4 * b;
  if (!t.live) {
    if (threadIdx.x == 0) {
      part[0] = neg_inf<A>();
      part[1] = A(0);
      part[2] = A(0);
      part[3] = A(0);
      if (k == 0) p.ws_xy[r] = A(0);
    }
    return;
  }
  const T* x = row_ptr<T>(p.input, r, p.ld_input);
  const T* q = KIND == kRowCrossEntropyProb ? row_ptr<T>(p.target_prob, r, p.ld_target) : nullptr;
  A m = neg_inf<A>(), s = A(0), ax = A(0), as = A(0);
  const int tid = static_cast<int>(threadIdx.x);
  if (p.linear) {
    row_pass1<T, KIND, VW, true>(p, x, q, c0, c1, tid, kSplitBlock, m, s, ax, as);
  } else {
    row_pass1<T, KIND, VW, false>(p, x, q, c0, c1, tid, kSplitBlock, m, s, ax, as);
  }
  block_merge4(m, s, ax, as, sh);
  if (tid == 0) {
    part[0] = m;
    part[1] = s;
    part[2] = ax;
    part[3] = as;
    // x_y is saved before kernel B may overwrite the logits in place.
    if (k == 0 && KIND != kRowCrossEntropyProb) p.ws_xy[r] = TypeInfo<T>::to_acc(x[t.y]);
  }
}

template <typename T, int KIND, int VW>
__global__ void __launch_bounds__(kSplitBlock, MinBlocks<T>::k256)
    row_split_grad_kernel(const RowParams<AccT<T>> p) {
  using A = AccT<T>;
  __shared__ double sh_d[32];
  __shared__ A sh[4][32];
  const double denom = block_denominator(p.denom_parts, p.n_denom, p.denom_const, sh_d);
  const int64_t b = blockIdx.x;
  const int64_t r = b / p.nch;
  const int k = static_cast<int>(b - r * p.nch);
  const int c0 = k * p.chunk;
  const int c1 = min(p.cols, c0 + p.chunk);
  const int tid = static_cast<int>(threadIdx.x);
  const bool want_stats = p.stats != nullptr;
  const RowTarget<A> t = row_target<KIND>(p, r, true);
  T* g = p.grad ? static_cast<T*>(p.grad) + r * p.ld_grad : nullptr;
  double total = 0.0;
  if (!t.live) {
    if (g) zero_fill<T, VW>(g, c0, c1, tid, kSplitBlock);
    if (tid == 0) {
      if (want_stats) {
        p.ws_stat[2 * b] = A(0);
        p.ws_stat[2 * b + 1] = A(0);
      }
      if (k == 0) {
        RowResult<A> res{};
        row_write<T, KIND>(p, r, t, res, A(0), A(0), false, total);
        if (p.loss_parts) p.loss_parts[r] = total;
      }
    }
    return;
  }
  // Merge the row's chunk partials, in chunk order (nch <= block size).
  A m = neg_inf<A>(), s = A(0), ax = A(0), as = A(0);
  if (tid < p.nch) {
    const A* part = p.ws_part + 4 * (r * p.nch + tid);
    m = part[0];
    s = part[1];
    ax = part[2];
    as = part[3];
  }
  block_merge4(m, s, ax, as, sh);
  const A x_y = KIND != kRowCrossEntropyProb ? p.ws_xy[r] : A(0);
  const RowResult<A> res = row_result<KIND>(p, t, m, s, ax, as, x_y, denom);
  const T* x = row_ptr<T>(p.input, r, p.ld_input);
  const T* q = KIND == kRowCrossEntropyProb ? row_ptr<T>(p.target_prob, r, p.ld_target) : nullptr;
  A sq = A(0), l1 = A(0);
  if (g || want_stats) {
    if (p.linear) {
      row_pass2<T, KIND, VW, true>(p, x, q, g, c0, c1, tid, kSplitBlock, res, t.y, want_stats,
                                   sq, l1);
    } else {
      row_pass2<T, KIND, VW, false>(p, x, q, g, c0, c1, tid, kSplitBlock, res, t.y, want_stats,
                                    sq, l1);
    }
    if (want_stats) {
      A dm = A(0), ds = A(0);
      block_merge4(dm, ds, sq, l1, sh);
      if (tid == 0) {
        p.ws_stat[2 * b] = sq;
        p.ws_stat[2 * b + 1] = l1;
      }
    }
  }
  if (tid == 0 && k == 0) {
    row_write<T, KIND>(p, r, t, res, A(0), A(0), false, total);
    if (p.loss_parts) p.loss_parts[r] = total;
  }
}

// Gradient norms (and the probability targets' GHM term) of split rows.
template <typename A>
__global__ void __launch_bounds__(256)
    row_split_stats_kernel(int64_t rows, int nch, const A* ws_stat, bool prob, float* stats) {
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    A sq = A(0), l1 = A(0);
    for (int k = 0; k < nch; ++k) {
      sq += ws_stat[2 * (r * nch + k)];
      l1 += ws_stat[2 * (r * nch + k) + 1];
    }
    stats[3 * r + 1] = static_cast<float>(ScalarMath<A>::sqrt(sq > A(0) ? sq : A(0)));
    // Ignored rows do not occur with probability targets; invalid ones
    // neither (no index). So every prob row is live here.
    if (prob) stats[3 * r + 2] = static_cast<float>(A(0.5) * l1);
  }
}

// --- the mean's denominator of the row losses ------------------------------
//   index targets: sum over non-ignored rows of w_r (x cw[y_r] for weighted
//   cross-entropy; an invalid y_r counts with class 0's weight, as in the
//   reference); probability targets: sum of w_r.
template <typename A>
__global__ void __launch_bounds__(256)
    row_prepass_kernel(int64_t rows, int cols, const int64_t* target, int64_t ignore_index,
                       const A* cw, const A* sw, double* parts) {
  __shared__ double sh[32];
  double v = 0.0;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double w = sw ? static_cast<double>(sw[r]) : 1.0;
    if (target) {
      const int64_t y = target[r];
      if (y == ignore_index) continue;
      if (cw) w *= static_cast<double>(cw[(y >= 0 && y < cols) ? y : 0]);
    }
    v += w;
  }
  v = block_sum(v, sh);
  if (threadIdx.x == 0) parts[blockIdx.x] = v;
}

// ===========================================================================
// Element-wise kernels

template <typename A>
struct ElemParams {
  int64_t N, S;
  const void* input;
  const void* target;
  void* grad;
  void* out;  // reduction none: weighted loss per element
  const A* weight;
  bool weight_full;
  const A* pos_weight;
  bool pos_weight_full;
  const A* sw;
  int reduction;
  float* stats;
  A gamma, alpha, delta;
  bool use_alpha;
  int gamma_int;  // focal_gamma_code(gamma): see focal_pow in samplewt_math.h
  const double* denom_parts;
  int n_denom;
  double denom_const;
  double* loss_parts;
  int64_t nch;    // chunk kernel: chunks per sample
  int64_t chunk;  // elements per chunk (multiple of the vector width)
  A* ws;          // chunk kernel with nch > 1 and stats: (N * nch, 3)
};

// GI: the sigmoid focal loss's gamma_int fixed at compile time (2, the
// default gamma), or -1 to take p.gamma_int at run time.
template <int KIND, int GI, typename A>
__device__ __forceinline__ LossGrad<ScalarMath<A>> elem_eval(A x, A t, A pw,
                                                             const ElemParams<A>& p) {
  return elem_loss<KIND, ScalarMath<A>>(x, t, pw, p.gamma, p.alpha, p.use_alpha,
                                        GI >= 0 ? GI : p.gamma_int, p.delta);
}

// Per-sample sums of one thread's elements.
template <typename A>
struct ElemSums {
  A loss = A(0);  // sum_j weight_ij l_ij
  A sq = A(0);    // sum_j (weight_ij dl_ij)^2
  A gh = A(0);    // sum_j |sigmoid(x_ij) - t_ij| (sigmoid losses)
};

// One thread's share of columns [c0, c1) of sample i (c0 a multiple of VW).
template <typename T, int KIND, int GI, int VW>
__device__ __forceinline__ void elem_span(const ElemParams<AccT<T>>& p, int64_t i, int64_t c0,
                                          int64_t c1, int lane, int nthr, AccT<T> w_i,
                                          AccT<T> scale, bool want_stats,
                                          ElemSums<AccT<T>>& acc) {
  using A = AccT<T>;
  using M = ScalarMath<A>;
  constexpr bool kSigmoid = KIND == kSigmoidFocal || KIND == kBCEWithLogits;
  const int64_t base = i * p.S;
  const T* x = static_cast<const T*>(p.input) + base;
  const T* tg = static_cast<const T*>(p.target) + base;
  T* g = p.grad ? static_cast<T*>(p.grad) + base : nullptr;
  T* o = p.out ? static_cast<T*>(p.out) + base : nullptr;
  const A* wr = p.weight ? p.weight + (p.weight_full ? base : 0) : nullptr;
  const A* pwr = p.pos_weight ? p.pos_weight + (p.pos_weight_full ? base : 0) : nullptr;
  auto one = [&](int64_t c, A xv, A tv, A& gout, A& lout) {
    const A pw = (KIND == kBCEWithLogits && pwr) ? pwr[c] : A(1);
    LossGrad<M> lg = elem_eval<KIND, GI>(xv, tv, pw, p);
    if (wr) {
      const A wv = wr[c];
      lg.loss = lg.loss * wv;
      lg.grad = lg.grad * wv;
    }
    acc.loss += lg.loss;
    if (want_stats) {
      acc.sq += lg.grad * lg.grad;
      if (kSigmoid) acc.gh += M::abs(sigmoid_parts<M>(xv).p - tv);
    }
    gout = lg.grad * scale;
    lout = lg.loss * w_i;
  };
  const int64_t nvec = (c1 - c0) / VW;
  for (int64_t v = lane; v < nvec; v += nthr) {
    const int64_t c = c0 + v * VW;
    A xv[VW], tv[VW], gv[VW], lv[VW];
    load_acc<T, VW, true>(x + c, xv);
    load_acc<T, VW, true>(tg + c, tv);
#pragma unroll
    for (int k = 0; k < VW; ++k) one(c + k, xv[k], tv[k], gv[k], lv[k]);
    if (g) store_acc<T, VW>(g + c, gv);
    if (o) store_acc<T, VW>(o + c, lv);
  }
  for (int64_t c = c0 + nvec * VW + lane; c < c1; c += nthr) {
    A xv[1], tv[1], gv[1], lv[1];
    load_acc<T, 1>(x + c, xv);
    load_acc<T, 1>(tg + c, tv);
    one(c, xv[0], tv[0], gv[0], lv[0]);
    if (g) store_acc<T, 1>(g + c, gv);
    if (o) store_acc<T, 1>(o + c, lv);
  }
}

template <typename A>
__device__ __forceinline__ A elem_scale(const ElemParams<A>& p, A w, double denom) {
  if (p.reduction == kMean && w != A(0)) return static_cast<A>(static_cast<double>(w) / denom);
  return w;
}

template <typename A>
__device__ __forceinline__ void elem_write_stats(const ElemParams<A>& p, int64_t i,
                                                 const ElemSums<A>& s) {
  float* st = p.stats + 3 * i;
  st[0] = static_cast<float>(s.loss);
  st[1] = static_cast<float>(ScalarMath<A>::sqrt(s.sq));
  st[2] = p.S > 0 ? static_cast<float>(s.gh / static_cast<A>(p.S)) : 0.f;
}

// Samples of up to a few thousand elements: G lanes per sample.
template <typename T, int KIND, int GI, int G, int VW>
__global__ void __launch_bounds__(kSmallBlock, MinBlocks<T>::k256)
    elem_rows_kernel(const ElemParams<AccT<T>> p) {
  using A = AccT<T>;
  __shared__ double sh_d[32];
  const double denom = block_denominator(p.denom_parts, p.n_denom, p.denom_const, sh_d);
  constexpr int RPB = kSmallBlock / G;
  const int lane = static_cast<int>(threadIdx.x) % G;
  const int grp = static_cast<int>(threadIdx.x) / G;
  const bool want_stats = p.stats != nullptr;
  const bool want_sums = want_stats || p.loss_parts != nullptr;
  double total = 0.0;
  for (int64_t tile = blockIdx.x; tile * RPB < p.N; tile += gridDim.x) {
    const int64_t i = tile * RPB + grp;
    const bool active = i < p.N;
    ElemSums<A> s;
    A w = A(1);
    if (active) {
      w = p.sw ? p.sw[i] : A(1);
      elem_span<T, KIND, GI, VW>(p, i, 0, p.S, lane, G, w, elem_scale(p, w, denom), want_stats,
                                 s);
    }
    if (want_sums) {
      s.loss = group_sum<G>(s.loss);
      if (want_stats) {
        s.sq = group_sum<G>(s.sq);
        s.gh = group_sum<G>(s.gh);
      }
    }
    if (active && lane == 0) {
      if (p.loss_parts) {
        total += p.sw ? static_cast<double>(w) * static_cast<double>(s.loss)
                      : static_cast<double>(s.loss);
      }
      if (want_stats) elem_write_stats(p, i, s);
    }
  }
  if (p.loss_parts) {
    const double b = block_sum(total, sh_d);
    if (threadIdx.x == 0) p.loss_parts[blockIdx.x] = b;
  }
}

// Long samples: blocks over (sample, chunk) items.
constexpr int kChunkBlock = 256;

template <typename T, int KIND, int GI, int VW>
__global__ void __launch_bounds__(kChunkBlock, MinBlocks<T>::k256)
    elem_chunk_kernel(const ElemParams<AccT<T>> p) {
  using A = AccT<T>;
  __shared__ double sh_d[32];
  __shared__ A sh[32];
  const double denom = block_denominator(p.denom_parts, p.n_denom, p.denom_const, sh_d);
  const bool want_stats = p.stats != nullptr;
  const bool want_sums = want_stats || p.loss_parts != nullptr;
  const int tid = static_cast<int>(threadIdx.x);
  double total = 0.0;
  const int64_t items = p.N * p.nch;
  for (int64_t it = blockIdx.x; it < items; it += gridDim.x) {
    const int64_t i = it / p.nch;
    const int64_t k = it - i * p.nch;
    const int64_t c0 = k * p.chunk;
    const int64_t c1 = c0 + p.chunk < p.S ? c0 + p.chunk : p.S;
    const A w = p.sw ? p.sw[i] : A(1);
    ElemSums<A> s;
    elem_span<T, KIND, GI, VW>(p, i, c0, c1, tid, kChunkBlock, w, elem_scale(p, w, denom),
                               want_stats, s);
    if (want_sums) {
      s.loss = block_sum(s.loss, sh);
      if (want_stats) {
        s.sq = block_sum(s.sq, sh);
        s.gh = block_sum(s.gh, sh);
      }
    }
    if (tid == 0) {
      if (p.loss_parts) {
        total += p.sw ? static_cast<double>(w) * static_cast<double>(s.loss)
                      : static_cast<double>(s.loss);
      }
      if (want_stats) {
        if (p.nch == 1) {
          elem_write_stats(p, i, s);
        } else {
          A* wsi = p.ws + 3 * it;
          wsi[0] = s.loss;
          wsi[1] = s.sq;
          wsi[2] = s.gh;
        }
      }
    }
  }
  if (p.loss_parts && tid == 0) p.loss_parts[blockIdx.x] = total;
}

template <typename A>
__global__ void __launch_bounds__(256) elem_chunk_stats_kernel(const ElemParams<A> p) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < p.N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    ElemSums<A> s;
    for (int64_t k = 0; k < p.nch; ++k) {
      const A* wsi = p.ws + 3 * (i * p.nch + k);
      s.loss += wsi[0];
      s.sq += wsi[1];
      s.gh += wsi[2];
    }
    elem_write_stats(p, i, s);
  }
}

// The mean's denominator of the element-wise losses: sum_i w_i * share_i,
// share_i = sum_j weight_ij (mse/l1 with weight) or per_sample.
template <typename A>
__global__ void __launch_bounds__(256)
    elem_prepass_kernel(int64_t N, int64_t S, const A* sw, const A* weight, bool weight_full,
                        double* parts) {
  __shared__ double sh[32];
  double v = 0.0;
  if (weight && weight_full) {
    // One warp per sample sums its weights.
    const int lane = static_cast<int>(threadIdx.x) & 31;
    const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) >> 5;
    const int64_t nwarps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
    for (int64_t i = warp; i < N; i += nwarps) {
      double share = 0.0;
      for (int64_t j = lane; j < S; j += 32) share += static_cast<double>(weight[i * S + j]);
      share = group_sum<32>(share);
      if (lane == 0) v += (sw ? static_cast<double>(sw[i]) : 1.0) * share;
    }
  } else {
    double share = static_cast<double>(S);
    if (weight) {  // one row of weights shared by every sample
      double ws = 0.0;
      for (int64_t j = threadIdx.x; j < S; j += blockDim.x) ws += static_cast<double>(weight[j]);
      share = block_sum(ws, sh);
    }
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < N;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      v += (sw ? static_cast<double>(sw[i]) : 1.0) * share;
    }
  }
  v = block_sum(v, sh);
  if (threadIdx.x == 0) parts[blockIdx.x] = v;
}

// ===========================================================================
// The scalar loss: sum of the partials, divided by the denominator for the
// mean, in the input's dtype.
constexpr int kFinalBlock = 512;

template <typename T>
__global__ void __launch_bounds__(kFinalBlock)
    finalize_loss_kernel(const double* parts, int64_t n, const double* denom_parts, int n_denom,
                         double denom_const, bool mean, T* out) {
  __shared__ double sh[32];
  double v = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) v += parts[i];
  double total = block_sum(v, sh);
  if (mean) total /= block_denominator(denom_parts, n_denom, denom_const, sh);
  if (threadIdx.x == 0) out[0] = TypeInfo<T>::from_double(total);
}

// ===========================================================================
// Host side: launch plans

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

inline bool aligned16(const void* p, int64_t ld, int64_t rows, size_t elem) {
  if (p == nullptr) return true;
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return rows <= 1 || (static_cast<uint64_t>(ld) * elem) % 16 == 0;
}

inline size_t align_up(size_t n) { return (n + 255) / 256 * 256; }

// Grid of a pre-pass over n items, at most 256 partial sums.
inline int prepass_grid(int64_t n, int64_t per_block) {
  return static_cast<int>(max64(1, min64(ceil_div(n, per_block), 256)));
}

enum RowRegime : int { kRowSmall = 0, kRowBlock = 1, kRowSplit = 2 };

struct RowPlan {
  bool run = false;   // rows > 0 and cols > 0
  int regime = kRowSmall;
  int vw = 1;         // elements per access
  int group = 32;     // small: lanes per row
  int block = 256;    // threads per block of the main kernel(s)
  int64_t grid = 1;   // blocks of the main kernel(s)
  int nch = 1;        // split: chunks per row
  int chunk = 0;      // split: elements per chunk
  int n_denom = 0;    // pre-pass blocks (0: denominator is denom_const)
  double denom_const = 0.0;
  int64_t n_loss_parts = 0;
  size_t off_denom = 0, off_loss = 0, off_part = 0, off_xy = 0, off_stat = 0;
  size_t bytes = 0;
};

inline RowPlan plan_row_loss(const RowLossArgs& a, size_t elem) {
  RowPlan p;
  const int64_t R = a.rows, C = a.cols;
  const int64_t sms = max64(1, a.num_sms);
  const size_t acc = elem == 8 ? 8 : 4;
  p.run = R > 0 && C > 0;
  const bool prob = a.kind == kRowCrossEntropyProb;
  const bool vec = aligned16(a.input, a.ld_input, R, elem) &&
                   aligned16(a.grad, a.ld_grad, R, elem) &&
                   (!prob || aligned16(a.target_prob, a.ld_target, R, elem));
  p.vw = vec ? static_cast<int>(16 / elem) : 1;
  const int64_t nv = ceil_div(max64(C, 1), p.vw);
  if (nv <= 256) {
    p.regime = kRowSmall;
    p.group = nv <= 2 ? 1 : (nv <= 24 ? 4 : 32);
    p.block = kSmallBlock;
    p.grid = max64(1, min64(ceil_div(R, kSmallBlock / p.group), sms * 8));
  } else {
    p.block = nv <= 1024 ? 128 : (nv <= 4096 ? 256 : kBigBlockMax);
    // Too few rows to fill the GPU: cut each row into chunks of at least
    // 256 vectors, for about two blocks per multiprocessor.
    int64_t nch = 1;
    if (R < 2 * sms) nch = min64(min64(ceil_div(2 * sms, max64(R, 1)), nv / 256), kSplitBlock);
    if (nch >= 2) {
      const int64_t chunk_vecs = ceil_div(nv, nch);
      p.regime = kRowSplit;
      p.chunk = static_cast<int>(chunk_vecs * p.vw);
      p.nch = static_cast<int>(ceil_div(C, p.chunk));
      p.block = kSplitBlock;
      p.grid = R * p.nch;
    } else {
      p.regime = kRowBlock;
      p.grid = max64(1, min64(R, sms * (2048 / p.block)));
    }
  }
  if (a.reduction == kMean) {
    if (p.run && (!prob || a.sample_weight)) {
      p.n_denom = prepass_grid(R, 4 * 256);
    } else {
      p.denom_const = p.run ? static_cast<double>(R) : 0.0;
    }
  }
  if (a.reduction != kNone && p.run) p.n_loss_parts = p.regime == kRowSplit ? R : p.grid;
  size_t off = 0;
  p.off_denom = off;
  off += align_up(sizeof(double) * p.n_denom);
  p.off_loss = off;
  off += align_up(sizeof(double) * p.n_loss_parts);
  if (p.regime == kRowSplit && p.run) {
    p.off_part = off;
    off += align_up(acc * 4 * R * p.nch);
    p.off_xy = off;
    off += align_up(acc * R);
    p.off_stat = off;
    off += align_up(acc * 2 * R * p.nch);
  }
  p.bytes = off > 0 ? off : 256;
  return p;
}

enum ElemRegime : int { kElemRows = 0, kElemChunk = 1 };

struct ElemPlan {
  bool run = false;  // numel > 0
  int regime = kElemRows;
  int vw = 1;
  int group = 32;
  int64_t grid = 1;
  int64_t nch = 1, chunk = 0;
  int n_denom = 0;
  double denom_const = 0.0;
  int64_t n_loss_parts = 0;
  size_t off_denom = 0, off_loss = 0, off_ws = 0;
  size_t bytes = 0;
};

inline ElemPlan plan_elem_loss(const ElemLossArgs& a, size_t elem) {
  ElemPlan p;
  const int64_t N = a.samples, S = a.per_sample;
  const int64_t sms = max64(1, a.num_sms);
  const size_t acc = elem == 8 ? 8 : 4;
  p.run = N > 0 && S > 0;
  const bool vec = aligned16(a.input, S, N, elem) && aligned16(a.target, S, N, elem) &&
                   aligned16(a.grad, S, N, elem) &&
                   (a.reduction != kNone || aligned16(a.out, S, N, elem));
  p.vw = vec ? static_cast<int>(16 / elem) : 1;
  const int64_t nv = ceil_div(max64(S, 1), p.vw);
  // Long samples, or few samples of some length: blocks over chunks.
  const bool chunked = nv > 512 || (nv > 64 && N < sms * 8);
  if (!chunked) {
    p.regime = kElemRows;
    p.group = nv <= 1 ? 1 : (nv <= 24 ? 4 : 32);
    p.grid = max64(1, min64(ceil_div(N, kSmallBlock / p.group), sms * 8));
  } else {
    p.regime = kElemChunk;
    p.chunk = static_cast<int64_t>(kChunkBlock) * p.vw * 4;
    p.nch = ceil_div(S, p.chunk);
    p.grid = max64(1, min64(N * p.nch, sms * 8));
  }
  const bool weight_share = a.mean_over_weight && a.weight != nullptr;
  if (a.reduction == kMean) {
    if (p.run && (a.sample_weight || weight_share)) {
      p.n_denom = (weight_share && a.weight_full) ? prepass_grid(N, 8) : prepass_grid(N, 4 * 256);
    } else {
      p.denom_const = p.run ? static_cast<double>(N) * static_cast<double>(S) : 0.0;
    }
  }
  if (a.reduction != kNone && p.run) p.n_loss_parts = p.grid;
  size_t off = 0;
  p.off_denom = off;
  off += align_up(sizeof(double) * p.n_denom);
  p.off_loss = off;
  off += align_up(sizeof(double) * p.n_loss_parts);
  if (p.regime == kElemChunk && p.nch > 1 && a.stats && p.run) {
    p.off_ws = off;
    off += align_up(acc * 3 * N * p.nch);
  }
  p.bytes = off > 0 ? off : 256;
  return p;
}

// --- row launch --------------------------------------------------------------

template <typename T, int KIND, int VW>
inline void launch_row_main(const RowPlan& plan, const RowParams<AccT<T>>& kp,
                            cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(plan.grid));
  switch (plan.regime) {
    case kRowSmall:
      if (plan.group == 1) {
        row_small_kernel<T, KIND, 1, VW><<<grid, kSmallBlock, 0, stream>>>(kp);
      } else if (plan.group == 4) {
        row_small_kernel<T, KIND, 4, VW><<<grid, kSmallBlock, 0, stream>>>(kp);
      } else {
        row_small_kernel<T, KIND, 32, VW><<<grid, kSmallBlock, 0, stream>>>(kp);
      }
      break;
    case kRowBlock:
      row_block_kernel<T, KIND, VW><<<grid, plan.block, 0, stream>>>(kp);
      break;
    default:
      row_split_partial_kernel<T, KIND, VW><<<grid, kSplitBlock, 0, stream>>>(kp);
      row_split_grad_kernel<T, KIND, VW><<<grid, kSplitBlock, 0, stream>>>(kp);
      if (kp.stats) {
        const unsigned g = static_cast<unsigned>(max64(1, min64(ceil_div(kp.rows, 256), 1024)));
        row_split_stats_kernel<AccT<T>><<<g, 256, 0, stream>>>(
            kp.rows, kp.nch, kp.ws_stat, KIND == kRowCrossEntropyProb, kp.stats);
      }
      break;
  }
}

template <typename T, int KIND>
inline void launch_row_kind(const RowPlan& plan, const RowParams<AccT<T>>& kp,
                            cudaStream_t stream) {
  if (plan.vw == 1) {
    launch_row_main<T, KIND, 1>(plan, kp, stream);
  } else {
    launch_row_main<T, KIND, Vec16<T>::value>(plan, kp, stream);
  }
}

// --- element-wise launch -------------------------------------------------------

template <typename T, int KIND, int GI, int VW>
inline void launch_elem_main(const ElemPlan& plan, const ElemParams<AccT<T>>& kp,
                             cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(plan.grid));
  if (plan.regime == kElemRows) {
    if (plan.group == 1) {
      elem_rows_kernel<T, KIND, GI, 1, VW><<<grid, kSmallBlock, 0, stream>>>(kp);
    } else if (plan.group == 4) {
      elem_rows_kernel<T, KIND, GI, 4, VW><<<grid, kSmallBlock, 0, stream>>>(kp);
    } else {
      elem_rows_kernel<T, KIND, GI, 32, VW><<<grid, kSmallBlock, 0, stream>>>(kp);
    }
  } else {
    elem_chunk_kernel<T, KIND, GI, VW><<<grid, kChunkBlock, 0, stream>>>(kp);
    if (kp.stats && kp.nch > 1) {
      const unsigned g = static_cast<unsigned>(max64(1, min64(ceil_div(kp.N, 256), 1024)));
      elem_chunk_stats_kernel<AccT<T>><<<g, 256, 0, stream>>>(kp);
    }
  }
}

template <typename T, int KIND, int GI>
inline void launch_elem_vw(const ElemPlan& plan, const ElemParams<AccT<T>>& kp,
                           cudaStream_t stream) {
  if (plan.vw == 1) {
    launch_elem_main<T, KIND, GI, 1>(plan, kp, stream);
  } else {
    launch_elem_main<T, KIND, GI, Vec16<T>::value>(plan, kp, stream);
  }
}

template <typename T, int KIND>
inline void launch_elem_kind(const ElemPlan& plan, const ElemParams<AccT<T>>& kp,
                             cudaStream_t stream) {
  // The sigmoid focal loss's default gamma = 2 gets its own kernels, with the
  // focal factor b * b folded in at compile time.
  if constexpr (KIND == kSigmoidFocal) {
    if (kp.gamma_int == 2) {
      launch_elem_vw<T, KIND, 2>(plan, kp, stream);
      return;
    }
  }
  launch_elem_vw<T, KIND, -1>(plan, kp, stream);
}

}  // namespace detail

// ===========================================================================
// Public launchers

// Bytes of device workspace the launcher needs (scratch, any alignment of
// 256 bytes; its contents need no initialisation).
inline size_t row_loss_workspace_bytes(const RowLossArgs& a, size_t elem_size) {
  return detail::plan_row_loss(a, elem_size).bytes;
}

inline size_t elem_loss_workspace_bytes(const ElemLossArgs& a, size_t elem_size) {
  return detail::plan_elem_loss(a, elem_size).bytes;
}

// Launches the softmax loss on `stream`: pre-pass (mean), main kernel(s),
// final reduction (sum/mean). T is float, double, __half or __nv_bfloat16.
// Returns cudaGetLastError().
template <typename T>
cudaError_t launch_row_loss(const RowLossArgs& a, void* workspace, cudaStream_t stream) {
  using A = detail::AccT<T>;
  const detail::RowPlan plan = detail::plan_row_loss(a, sizeof(T));
  char* ws = static_cast<char*>(workspace);
  const double eps = a.kind == kRowFocal ? 0.0 : a.label_smoothing;
  detail::RowParams<A> kp;
  kp.rows = a.rows;
  kp.cols = static_cast<int>(a.cols);
  kp.input = a.input;
  kp.ld_input = a.ld_input;
  kp.grad = a.grad;
  kp.ld_grad = a.ld_grad;
  kp.target = a.target;
  kp.target_prob = a.target_prob;
  kp.ld_target = a.ld_target;
  kp.cw = static_cast<const A*>(a.class_weight);
  kp.sw = static_cast<const A*>(a.sample_weight);
  kp.reduction = a.reduction;
  kp.ignore_index = a.ignore_index;
  kp.eps = static_cast<A>(eps);
  kp.q_scale = static_cast<A>(1.0 - eps);
  kp.q_shift = a.cols > 0 ? static_cast<A>(eps) / static_cast<A>(a.cols) : A(0);
  kp.gamma = static_cast<A>(a.gamma);
  kp.linear = a.kind == kRowCrossEntropyProb || (a.kind == kRowCrossEntropyIndex && eps != 0.0);
  kp.out = a.out;
  kp.stats = a.stats;
  kp.denom_parts =
      plan.n_denom > 0 ? reinterpret_cast<const double*>(ws + plan.off_denom) : nullptr;
  kp.n_denom = plan.n_denom;
  kp.denom_const = plan.denom_const;
  kp.loss_parts =
      plan.n_loss_parts > 0 ? reinterpret_cast<double*>(ws + plan.off_loss) : nullptr;
  kp.nch = plan.nch;
  kp.chunk = plan.chunk;
  const bool split = plan.regime == detail::kRowSplit && plan.run;
  kp.ws_part = split ? reinterpret_cast<A*>(ws + plan.off_part) : nullptr;
  kp.ws_xy = split ? reinterpret_cast<A*>(ws + plan.off_xy) : nullptr;
  kp.ws_stat = split ? reinterpret_cast<A*>(ws + plan.off_stat) : nullptr;

  if (plan.run) {
    if (plan.n_denom > 0) {
      detail::row_prepass_kernel<A><<<plan.n_denom, 256, 0, stream>>>(
          a.rows, kp.cols, a.kind == kRowCrossEntropyProb ? nullptr : a.target, a.ignore_index,
          a.kind == kRowCrossEntropyIndex ? kp.cw : nullptr, kp.sw,
          reinterpret_cast<double*>(ws + plan.off_denom));
    }
    switch (a.kind) {
      case kRowCrossEntropyIndex:
        detail::launch_row_kind<T, kRowCrossEntropyIndex>(plan, kp, stream);
        break;
      case kRowCrossEntropyProb:
        detail::launch_row_kind<T, kRowCrossEntropyProb>(plan, kp, stream);
        break;
      default:
        detail::launch_row_kind<T, kRowFocal>(plan, kp, stream);
        break;
    }
  }
  if (a.reduction != kNone) {
    detail::finalize_loss_kernel<T><<<1, detail::kFinalBlock, 0, stream>>>(
        kp.loss_parts, plan.n_loss_parts, kp.denom_parts, plan.n_denom, plan.denom_const,
        a.reduction == kMean, static_cast<T*>(a.out));
  }
  return cudaGetLastError();
}

// Launches an element-wise loss on `stream` (pre-pass for the mean, main
// kernel, statistics merge for chunked samples, final reduction).
template <typename T>
cudaError_t launch_elem_loss(const ElemLossArgs& a, void* workspace, cudaStream_t stream) {
  using A = detail::AccT<T>;
  const detail::ElemPlan plan = detail::plan_elem_loss(a, sizeof(T));
  char* ws = static_cast<char*>(workspace);
  detail::ElemParams<A> kp;
  kp.N = a.samples;
  kp.S = a.per_sample;
  kp.input = a.input;
  kp.target = a.target;
  kp.grad = a.grad;
  kp.out = a.reduction == kNone ? a.out : nullptr;
  kp.weight = static_cast<const A*>(a.weight);
  kp.weight_full = a.weight_full;
  kp.pos_weight = static_cast<const A*>(a.pos_weight);
  kp.pos_weight_full = a.pos_weight_full;
  kp.sw = static_cast<const A*>(a.sample_weight);
  kp.reduction = a.reduction;
  kp.stats = a.stats;
  kp.gamma = static_cast<A>(a.gamma);
  kp.alpha = static_cast<A>(a.alpha);
  kp.use_alpha = a.alpha >= 0.0;
  kp.gamma_int = focal_gamma_code(a.gamma);
  kp.delta = static_cast<A>(a.delta);
  kp.denom_parts =
      plan.n_denom > 0 ? reinterpret_cast<const double*>(ws + plan.off_denom) : nullptr;
  kp.n_denom = plan.n_denom;
  kp.denom_const = plan.denom_const;
  kp.loss_parts =
      plan.n_loss_parts > 0 ? reinterpret_cast<double*>(ws + plan.off_loss) : nullptr;
  kp.nch = plan.nch;
  kp.chunk = plan.chunk;
  kp.ws = (plan.regime == detail::kElemChunk && plan.nch > 1 && a.stats && plan.run)
              ? reinterpret_cast<A*>(ws + plan.off_ws)
              : nullptr;

  if (plan.run) {
    if (plan.n_denom > 0) {
      const bool share = a.mean_over_weight && a.weight != nullptr;
      detail::elem_prepass_kernel<A><<<plan.n_denom, 256, 0, stream>>>(
          a.samples, a.per_sample, kp.sw, share ? kp.weight : nullptr, share && a.weight_full,
          reinterpret_cast<double*>(ws + plan.off_denom));
    }
    switch (a.kind) {
      case kSigmoidFocal:
        detail::launch_elem_kind<T, kSigmoidFocal>(plan, kp, stream);
        break;
      case kBCEWithLogits:
        detail::launch_elem_kind<T, kBCEWithLogits>(plan, kp, stream);
        break;
      case kMSE:
        detail::launch_elem_kind<T, kMSE>(plan, kp, stream);
        break;
      case kL1:
        detail::launch_elem_kind<T, kL1>(plan, kp, stream);
        break;
      default:
        detail::launch_elem_kind<T, kHuber>(plan, kp, stream);
        break;
    }
  }
  if (a.reduction != kNone) {
    detail::finalize_loss_kernel<T><<<1, detail::kFinalBlock, 0, stream>>>(
        kp.loss_parts, plan.n_loss_parts, kp.denom_parts, plan.n_denom, plan.denom_const,
        a.reduction == kMean, static_cast<T*>(a.out));
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace samplewt
