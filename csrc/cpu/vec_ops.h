// The SIMD building blocks of the CPU loss kernels (loss_kernels_impl.h),
// compiled once per instruction set as that file is: the math policy that
// samplewt_math.h's formulas run on (VecMath, with inline exp for the softmax
// and sigmoid losses), loads and stores between a tensor's dtype and its
// float accumulation (streamed for outputs larger than the caches), and
// horizontal sums.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernel_args.h"

namespace samplewt {
namespace cpu {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

#if defined(CPU_CAPABILITY_AVX512)
// exp_u20 for softmax terms (x <= 0 where it counts): ATen's exp_u20 range
// reduction and polynomial, scaled by 2^n with one vscalefps instead of its
// clamps, integer round trip and two products: half its instructions, the
// same bits down to exp(-86.5). Below that it gives 0 (exp_u20 gives 0 below
// ln FLT_MIN = -87.3), so that no denormal comes out; NaN stays NaN.
inline Vectorized<float> softmax_exp_avx512(const Vectorized<float>& v) {
  const __m512 x = v;
  const __m512 log2e = _mm512_castsi512_ps(_mm512_set1_epi32(0x3fb8aa3b));
  const __m512 ln2 = _mm512_castsi512_ps(_mm512_set1_epi32(0x3f317218));
  // n = floor(x log2(e) + 1/2), r = x - n ln 2
  const __m512 n = _mm512_roundscale_ps(_mm512_fmadd_ps(x, log2e, _mm512_set1_ps(0.5f)),
                                        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fnmadd_ps(n, ln2, x);
  __m512 p = _mm512_fmadd_ps(r, _mm512_set1_ps(0.00828929059f), _mm512_set1_ps(0.0418978221f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.166676521f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.499991506f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.999999701f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(1.0f));
  const __mmask16 normal = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-86.5f), _CMP_NLT_UQ);
  return _mm512_maskz_scalef_ps(normal, p, n);
}
#endif

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// exp(x) for x <= 0, inline (Sleef's 1-ulp exp is a call, and its vectors
// went through memory around it: BCE's time). Cody-Waite reduction with ln 2
// in two parts, Cephes' expf polynomial, then 2^n: within 1.26 ulp of exp
// over [-87.3, 0] (every float checked, both instruction sets). Below -87.3
// (ln FLT_MIN) it gives 0, so that no denormal comes out; NaN stays NaN.
inline Vectorized<float> exp_nonpos_simd(const Vectorized<float>& x) {
  using V = Vectorized<float>;
  const V n = (x * V(1.44269504088896341f)).round();
  const V r = at::vec::fmadd(n, V(2.12194440e-4f), at::vec::fmadd(n, V(-0.693359375f), x));
  V p(1.9875691500e-4f);
  p = at::vec::fmadd(p, r, V(1.3981999507e-3f));
  p = at::vec::fmadd(p, r, V(8.3334519073e-3f));
  p = at::vec::fmadd(p, r, V(4.1665795894e-2f));
  p = at::vec::fmadd(p, r, V(1.6666665459e-1f));
  p = at::vec::fmadd(p, r, V(5.0000001201e-1f));
  p = at::vec::fmadd(p, r * r, r + V(1.0f));
#if defined(CPU_CAPABILITY_AVX512)
  const __mmask16 normal = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_NLT_UQ);
  return _mm512_maskz_scalef_ps(normal, p, n);
#else
  // 2^n built in the exponent field (n >= -126 wherever it is kept).
  const __m256i pow2 = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 normal = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_NLT_UQ);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(pow2)), normal);
#endif
}
#endif

// The SIMD math policy of samplewt_math.h.
template <typename acc_t>
struct VecMath {
  using V = Vectorized<acc_t>;
  static V splat(double c) { return V(static_cast<acc_t>(c)); }
  static V exp(V x) { return x.exp(); }
  static V exp_nonpos(V x) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<acc_t, float>) return exp_nonpos_simd(x);
#endif
    return x.exp();
  }
  // ATen's softmax uses the same 20-ulp polynomial: the 1-ulp Sleef exp
  // would make the row kernels compute-bound.
  static V softmax_exp(V x) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<acc_t, float>) return softmax_exp_avx512(x);
#endif
    return x.exp_u20();
  }
  static V log(V x) { return x.log(); }
  static V log1p(V x) { return x.log1p(); }
  // log1p(e) for e in [0, 1] (softplus's e = exp(-|x|)): 2 atanh(s) with
  // s = e / (2 + e) <= 1/3, summed as its odd series; within a few float ulp,
  // and a fraction of the time of Sleef's log1p, which dominated BCE's time.
  static V log1p_unit(V e) {
    if constexpr (std::is_same_v<acc_t, float>) {
      // The series times 2 (its coefficients doubled: exact, the same bits
      // as (s + s) * p, one instruction fewer).
      const V s = e / (V(2.0f) + e);
      const V s2 = s * s;
      V p = V(2.0f / 15);
      p = at::vec::fmadd(p, s2, V(2.0f / 13));
      p = at::vec::fmadd(p, s2, V(2.0f / 11));
      p = at::vec::fmadd(p, s2, V(2.0f / 9));
      p = at::vec::fmadd(p, s2, V(2.0f / 7));
      p = at::vec::fmadd(p, s2, V(2.0f / 5));
      p = at::vec::fmadd(p, s2, V(2.0f / 3));
      p = at::vec::fmadd(p, s2, V(2.0f));
      return s * p;
    } else {
      return e.log1p();
    }
  }
  static V expm1(V x) { return x.expm1(); }
  static V abs(V x) { return x.abs(); }
  static V sqrt(V x) { return x.sqrt(); }
  static V max(V a, V b) { return at::vec::maximum(a, b); }
  static V min(V a, V b) { return at::vec::minimum(a, b); }
  // max/min against a bound c that is never NaN, a NaN v staying NaN: one
  // instruction on x86, whose max/min return their second operand when
  // either is NaN, where the NaN-propagating max of two variables takes three.
  static V max_bound(V v, V c) { return bounded<true>(v, c); }
  static V min_bound(V v, V c) { return bounded<false>(v, c); }
  template <bool kMax>
  static V bounded(V v, V c) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<acc_t, float>) return kMax ? _mm512_max_ps(c, v) : _mm512_min_ps(c, v);
#elif defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<acc_t, float>) return kMax ? _mm256_max_ps(c, v) : _mm256_min_ps(c, v);
#endif
    return kMax ? max(v, c) : min(v, c);
  }
  static V select(V mask, V a, V b) { return V::blendv(b, a, mask); }
};

// Loads n <= V::size() elements as an accumulation vector (zero padded).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
inline Vectorized<acc_t> vload(const scalar_t* p, int64_t n) {
  using V = Vectorized<acc_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return n == V::size() ? V::loadu(p) : V::loadu(p, n);
  } else {
    V out;
    if (n == V::size()) {
      at::vec::load_to_float(p, out);
    } else {
      scalar_t buf[V::size()];
      std::memset(static_cast<void*>(buf), 0, sizeof(buf));
      std::memcpy(static_cast<void*>(buf), p, n * sizeof(scalar_t));
      at::vec::load_to_float(buf, out);
    }
    return out;
  }
}

#if defined(CPU_CAPABILITY_AVX512)
// One float vector as 16 bfloat16/float16 values, with ATen's own rounding.
template <typename scalar_t>
inline __m256i half_bits(const Vectorized<float>& v) {
  const __m512 f = v;
  return std::is_same_v<scalar_t, c10::BFloat16> ? at::vec::cvtfp32_bf16(f) : at::vec::cvtfp32_fp16(f);
}
#endif

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
inline void vstore(scalar_t* p, Vectorized<acc_t> v, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    v.store(p, n);
#if defined(CPU_CAPABILITY_AVX512)
  } else if constexpr (std::is_same_v<acc_t, float> && (std::is_same_v<scalar_t, c10::BFloat16> ||
                                                        std::is_same_v<scalar_t, c10::Half>)) {
    // One float vector to 16 halves, with ATen's own rounding: converting a
    // pair (v, v) and storing half of it did twice the work.
    const __m256i h = half_bits<scalar_t>(v);
    if (n == 16) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), h);
    } else {
      _mm256_mask_storeu_epi16(p, static_cast<__mmask16>((1u << n) - 1u), h);
    }
#endif
  } else {
    at::vec::convert_from_float<scalar_t>(v, v).store(p, n);
  }
}

// Outputs of stream_bytes() and more (kernel_args.h) are streamed.
// vstore, streamed when `stream`, the vector full and p aligned to its bytes.
// After streaming stores a thread calls stream_fence().
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
inline void vstore_out(scalar_t* p, Vectorized<acc_t> v, int64_t n, bool stream) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (stream && n == Vectorized<float>::size() &&
        reinterpret_cast<uintptr_t>(p) % sizeof(Vectorized<float>) == 0) {
#if defined(CPU_CAPABILITY_AVX512)
      _mm512_stream_ps(p, v);
#else
      _mm256_stream_ps(p, v);
#endif
      return;
    }
  }
#endif
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<acc_t, float> && (std::is_same_v<scalar_t, c10::BFloat16> ||
                                                 std::is_same_v<scalar_t, c10::Half>)) {
    if (stream && n == 16 && reinterpret_cast<uintptr_t>(p) % 32 == 0) {
      _mm256_stream_si256(reinterpret_cast<__m256i*>(p), half_bits<scalar_t>(v));
      return;
    }
  }
#endif
  (void)stream;
  vstore(p, v, n);
}

inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

template <typename acc_t>
inline acc_t hsum(const Vectorized<acc_t>& v) {
  return at::vec::vec_reduce_all<acc_t>(
      [](Vectorized<acc_t>& a, Vectorized<acc_t>& b) { return a + b; }, v);
}

template <typename acc_t>
inline acc_t hmax(const Vectorized<acc_t>& v) {
  return at::vec::vec_reduce_all<acc_t>(
      [](Vectorized<acc_t>& a, Vectorized<acc_t>& b) {
        return at::vec::maximum(a, b);
      },
      v);
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace samplewt
