// Device utilities of the CUDA kernels: dtype traits, 128-bit loads and
// stores, warp and block reductions, and the final reduction kernel.
//
// Torch-free: only the CUDA runtime headers and the shared math header, so
// that the kernels compile with plain nvcc (make nvcc-check) and under the
// host emulation of tests/cuda_emu, which supplies its own CUDA headers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../samplewt_math.h"

// Kernel launch on a stream. The host emulation defines its own.
#ifndef SWT_LAUNCH
#define SWT_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<(grid), (block), 0, (stream)>>>
#endif

namespace samplewt {
namespace cuda {

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

// The 16-bit types: eight values, two per 32-bit word (the lower half
// first). Bits supplies two(word, lo, hi), the word's two values as floats,
// and bits(f), f rounded to the type's 16 bits.
template <class Bits>
struct Pack16 {
  static __device__ __forceinline__ unsigned join(float lo, float hi) {
    return static_cast<unsigned>(Bits::bits(lo)) | (static_cast<unsigned>(Bits::bits(hi)) << 16);
  }
  static __device__ __forceinline__ void unpack(const uint4& u, float (&v)[8]) {
    Bits::two(u.x, v[0], v[1]);
    Bits::two(u.y, v[2], v[3]);
    Bits::two(u.z, v[4], v[5]);
    Bits::two(u.w, v[6], v[7]);
  }
  static __device__ __forceinline__ uint4 pack(const float (&v)[8]) {
    return make_uint4(join(v[0], v[1]), join(v[2], v[3]), join(v[4], v[5]), join(v[6], v[7]));
  }
};

template <>
struct Pack<__half> : Pack16<Pack<__half>> {
  static __device__ __forceinline__ void two(unsigned w, float& lo, float& hi) {
    lo = __half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xffffu)));
    hi = __half2float(__ushort_as_half(static_cast<unsigned short>(w >> 16)));
  }
  static __device__ __forceinline__ unsigned short bits(float f) {
    return __half_as_ushort(__float2half_rn(f));
  }
};

template <>
struct Pack<__nv_bfloat16> : Pack16<Pack<__nv_bfloat16>> {
  // bfloat16 -> float is exact: the 16 bits are the float's upper half.
  static __device__ __forceinline__ void two(unsigned w, float& lo, float& hi) {
    lo = __uint_as_float(w << 16);
    hi = __uint_as_float(w & 0xffff0000u);
  }
  static __device__ __forceinline__ unsigned short bits(float f) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(f));
  }
};

// The raw 16 bytes at p (16-byte aligned), for loops that issue several loads
// before converting any: more bytes in flight per thread.
template <bool STREAM = false>
__device__ __forceinline__ uint4 load16(const void* p) {
  const uint4* q = reinterpret_cast<const uint4*>(p);
  if constexpr (STREAM) {
    return __ldcs(q);
  } else {
    return *q;
  }
}

// Loads VW consecutive elements as acc values. VW is 1 (any alignment) or
// Vec16<T>::value (p 16-byte aligned). STREAM marks the last use of the data
// (cache-streaming, evict first).
template <typename T, int VW, bool STREAM = false>
__device__ __forceinline__ void load_acc(const T* p, AccT<T> (&v)[VW]) {
  if constexpr (VW == 1) {
    v[0] = TypeInfo<T>::to_acc(*p);
  } else {
    static_assert(VW * sizeof(T) == 16, "vector access must be 128-bit");
    Pack<T>::unpack(load16<STREAM>(p), v);
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

// Minimum resident blocks per multiprocessor for __launch_bounds__: float
// accumulation is held to 64 registers (4 x 256 or 2 x 512 threads per SM,
// enough loads in flight to stream HBM); double kernels, which serve
// gradcheck rather than speed, may use 128+ registers instead of spilling.
template <typename T>
struct MinBlocks {
  static constexpr int k256 = sizeof(AccT<T>) == 8 ? 1 : 4;
  static constexpr int k512 = sizeof(AccT<T>) == 8 ? 1 : 2;
};

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

// ---------------------------------------------------------------------------
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

// Host side: the final reduction of a sum or mean loss.
template <typename T>
inline void launch_finalize(int reduction, const double* loss_parts, int64_t n_loss_parts,
                            const double* denom_parts, int n_denom, double denom_const,
                            void* out, cudaStream_t stream) {
  if (reduction == kNone) return;
  SWT_LAUNCH(1, kFinalBlock, stream, finalize_loss_kernel<T>)(
      loss_parts, n_loss_parts, denom_parts, n_denom, denom_const, reduction == kMean,
      static_cast<T*>(out));
}

// Host side: calls f(std::integral_constant<int, K>{}) for the K among the
// kinds that equals `kind` (the last one when none does), so that a loss
// kind known at run time selects kernels templated on it.
template <int K, int... REST, class F>
inline void with_kind(int kind, F&& f) {
  if constexpr (sizeof...(REST) == 0) {
    f(std::integral_constant<int, K>{});
  } else if (kind == K) {
    f(std::integral_constant<int, K>{});
  } else {
    with_kind<REST...>(kind, f);
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace samplewt
