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
// The sigmoid losses' two transcendentals, exp(-|x|) and log1p of it, inline
// and table-driven: a 16-entry table is one register and one permute, which
// leaves each a short polynomial (BCE 65536x80 in L1, AVX-512: 0.69 -> 0.57
// ns per element). Both instruction sets compute the same bits.
// 2^(j/16), 1/(1+j/16) and log(1+j/16) rounded to float, j = 0..15.
alignas(64) inline constexpr float kExp2Table[16] = {
    0x1.000000p+0f, 0x1.0b5586p+0f, 0x1.172b84p+0f, 0x1.2387a6p+0f, 0x1.306fe0p+0f, 0x1.3dea64p+0f,
    0x1.4bfdaep+0f, 0x1.5ab07ep+0f, 0x1.6a09e6p+0f, 0x1.7a1148p+0f, 0x1.8ace54p+0f, 0x1.9c4918p+0f,
    0x1.ae89fap+0f, 0x1.c199bep+0f, 0x1.d5818ep+0f, 0x1.ea4afap+0f};
alignas(64) inline constexpr float kUnitStepTable[16] = {
    0.0f, 1 / 16.f, 2 / 16.f, 3 / 16.f, 4 / 16.f, 5 / 16.f, 6 / 16.f, 7 / 16.f,
    8 / 16.f, 9 / 16.f, 10 / 16.f, 11 / 16.f, 12 / 16.f, 13 / 16.f, 14 / 16.f, 15 / 16.f};
alignas(64) inline constexpr float kInvStepTable[16] = {
    0x1.000000p+0f, 0x1.e1e1e2p-1f, 0x1.c71c72p-1f, 0x1.af286cp-1f, 0x1.99999ap-1f, 0x1.861862p-1f,
    0x1.745d18p-1f, 0x1.642c86p-1f, 0x1.555556p-1f, 0x1.47ae14p-1f, 0x1.3b13b2p-1f, 0x1.2f684cp-1f,
    0x1.24924ap-1f, 0x1.1a7b96p-1f, 0x1.111112p-1f, 0x1.084210p-1f};
alignas(64) inline constexpr float kLogStepTable[16] = {
    0.0f,           0x1.f0a30cp-5f, 0x1.e27076p-4f, 0x1.5ff308p-3f, 0x1.c8ff7cp-3f, 0x1.1675cap-2f,
    0x1.4618bcp-2f, 0x1.739d80p-2f, 0x1.9f323ep-2f, 0x1.c8ff7cp-2f, 0x1.f128f6p-2f, 0x1.0be72ep-1f,
    0x1.1e85f6p-1f, 0x1.307d74p-1f, 0x1.41d8fep-1f, 0x1.52a2d2p-1f};

// table[idx & 15] in every lane.
inline Vectorized<float> lookup16(const float* table, const Vectorized<float>& idx_bits) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_permutexvar_ps(_mm512_castps_si512(idx_bits), _mm512_load_ps(table));
#else
  const __m256i idx = _mm256_castps_si256(idx_bits);
  const __m256 lo = _mm256_permutevar8x32_ps(_mm256_load_ps(table), idx);
  const __m256 hi = _mm256_permutevar8x32_ps(_mm256_load_ps(table + 8), idx);
  return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
#endif
}

// exp(x) for x <= 0: x = (n + j/16) ln 2 + r with |r| <= ln 2 / 32, so
// exp(x) = 2^n 2^(j/16) e^r, e^r a cubic. Within 1.02 ulp over [-87.3, 0]
// (every float checked); below -87.3 (ln FLT_MIN) it gives 0, so that no
// denormal comes out; NaN stays NaN.
inline Vectorized<float> exp_nonpos_simd(const Vectorized<float>& x) {
  using V = Vectorized<float>;
  // k = x log2(e) rounded to 1/16: the sum's ulp at 1.5 * 2^19 is 1/16, and
  // its low 4 mantissa bits are j.
  const V magic(0x1.8p19f);
  const V kk = at::vec::fmadd(x, V(0x1.715476p+0f), magic);
  const V k = kk - magic;
  // ln 2 in two parts, the first exact times any k.
  V r = at::vec::fnmadd(k, V(0.693359375f), x);
  r = at::vec::fnmadd(k, V(-2.12194440e-4f), r);
  const V t = lookup16(kExp2Table, kk);
  const V h = at::vec::fmadd(V(0.16666961f), r, V(0.50000978f));
  const V p = at::vec::fmadd(t, at::vec::fmadd(r * r, h, r), t);
#if defined(CPU_CAPABILITY_AVX512)
  const __mmask16 normal = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_NLT_UQ);
  return _mm512_maskz_scalef_ps(normal, p, k);  // p 2^floor(k)
#else
  // 2^floor(k) built in the exponent field: kk's bits less magic's are 16 k.
  const __m256i n = _mm256_srai_epi32(
      _mm256_sub_epi32(_mm256_castps_si256(kk), _mm256_castps_si256(magic)), 4);
  const __m256i pow2 = _mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23);
  const __m256 normal = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_NLT_UQ);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(pow2)), normal);
#endif
}

// log1p(e) for e in [0, 1]: e = c - 1 + d with c = 1 + j/16 <= 1 + e, so
// log1p(e) = log(c) + log1p(d / c), the latter r + r^2 g(r) with g a cubic
// fit over [0, 1/16]. d is exact and, where c = 1, r = e: no cancellation
// for small e. Within 1.25 ulp over [0, 1] (every float checked).
inline Vectorized<float> log1p_unit_simd(const Vectorized<float>& e) {
  using V = Vectorized<float>;
  // j from 1 + e's top 4 mantissa bits (one more where the sum rounded up,
  // which d < 0 absorbs); bit 4 of the shifted bits is 0 only at 1 + e = 2,
  // which takes c = 2.
  const V u = V(1.0f) + e;
#if defined(CPU_CAPABILITY_AVX512)
  const V idx = _mm512_castsi512_ps(_mm512_srli_epi32(_mm512_castps_si512(u), 19));
  const __mmask16 top = _mm512_test_epi32_mask(_mm512_castps_si512(idx), _mm512_set1_epi32(16));
  const auto at_two = [&](const float* table, float two) -> V {
    return _mm512_mask_blend_ps(top, _mm512_set1_ps(two), lookup16(table, idx));
  };
#else
  const V idx = _mm256_castsi256_ps(_mm256_srli_epi32(_mm256_castps_si256(u), 19));
  const __m256 top = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(idx), 27));
  const auto at_two = [&](const float* table, float two) -> V {
    return _mm256_blendv_ps(_mm256_set1_ps(two), lookup16(table, idx), top);
  };
#endif
  const V r = (e - at_two(kUnitStepTable, 1.0f)) * at_two(kInvStepTable, 0.5f);
  V g = at::vec::fmadd(V(0.17691499f), r, V(-0.24884148f));
  g = at::vec::fmadd(g, r, V(0.33331034f));
  g = at::vec::fmadd(g, r, V(-0.49999985f));
  return at_two(kLogStepTable, 0x1.62e430p-1f) + at::vec::fmadd(r * r, g, r);
}
#endif

// The SIMD math policy of samplewt_math.h.
template <typename acc_t>
struct VecMath {
  using V = Vectorized<acc_t>;
  using Scalar = acc_t;
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
  // log1p(e) for e in [0, 1] (softplus's e = exp(-|x|)).
  static V log1p_unit(V e) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<acc_t, float>) return log1p_unit_simd(e);
#endif
    return e.log1p();
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
