// The adaptive weight tables' per-sample formulas, shared by the CPU loops
// (cpu/table_cpu.cpp) and the CUDA kernels (cuda/table_update.cu), and
// mirrored by the pure-PyTorch reference (samplewt_ops/weights/).
//
// Torch-free, like samplewt_math.h. Every step is rounded as the reference's
// torch ops round it (float32 products and sums taken one at a time, never
// fused), so that a table updated by either device or by the reference holds
// the same bits.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SWT_TABLE_HD __host__ __device__ __forceinline__
#else
#define SWT_TABLE_HD inline
#endif

namespace samplewt {

// The policies, as the schemas' `policy` argument names them (weights/policies.py).
enum TablePolicy : int64_t {
  kNoTable = 0,
  kLossEMA = 1,
  kGradNormEMA = 2,
  kSelfPacedHard = 3,
  kSelfPacedSoft = 4,
  kOHEM = 5,
  kGHM = 6,
  kSmallLoss = 7,
  kNumTablePolicies
};

// The per-sample EMAs of a table: rows of its (3, num_samples) `table_ema`.
enum TableStat : int { kLossStat = 0, kGradNormStat = 1, kGStat = 2, kNumTableStats = 3 };

// Slots of `policy_params` (float[]): the history momentum first, then the
// policy's own numbers.
enum TableParam : int {
  kMomentum = 0,
  // LossEMA, GradNormEMA
  kPower = 1, kMinWeight = 2, kMaxWeight = 3,
  // OHEM: ceil(keep_num * N / keep_den) kept
  kKeepNum = 1, kKeepDen = 2,
  // GHM
  kBins = 1, kBinMomentum = 2,
  // SmallLoss
  kForgottenWeight = 1,
};

SWT_TABLE_HD bool table_per_batch(int64_t policy) { return policy == kOHEM || policy == kGHM; }

// Rounding steps kept apart: nvcc and some host compilers would contract
// a * b + c into one fused multiply-add, which the reference never does.
#if defined(__CUDA_ARCH__)
SWT_TABLE_HD float mul_rn(float a, float b) { return __fmul_rn(a, b); }
SWT_TABLE_HD float add_rn(float a, float b) { return __fadd_rn(a, b); }
#else
SWT_TABLE_HD float mul_rn(float a, float b) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__aarch64__))
  float p = a * b;
  // An empty asm that "changes" the product: nothing can fuse it with an add,
  // and it stays in its register.
#if defined(__aarch64__)
  __asm__("" : "+w"(p));
#else
  __asm__("" : "+x"(p));
#endif
  return p;
#else
  volatile float p = a * b;
  return p;
#endif
}
SWT_TABLE_HD float add_rn(float a, float b) { return a + b; }
#endif

// One EMA step of a sample observed in this batch: the mean of its
// observations x (float64 sum over the batch in batch order, divided by the
// count, rounded to float32), e <- m e + (1 - m) x, or e <- x on the first
// observation.
SWT_TABLE_HD float table_ema_step(float old, double obs_sum, int64_t count, float m,
                                  float one_minus_m, bool seen_before) {
  // One observation (the usual case): its float32 value, with no division.
  const float x = count == 1 ? static_cast<float>(obs_sum)
                             : static_cast<float>(obs_sum / static_cast<double>(count));
  return seen_before ? add_rn(mul_rn(m, old), mul_rn(one_minus_m, x)) : x;
}

// clamp(x, lo, hi) as torch.clamp: NaN stays NaN. (fminf/fmaxf drop NaN,
// and are library calls on the host.)
SWT_TABLE_HD float table_clamp(float x, float lo, float hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}

// The observation of GHM's g for its EMA: clamped to [0, 1] in float32.
SWT_TABLE_HD float table_g_observation(float g) { return table_clamp(g, 0.0f, 1.0f); }

// A history policy's weight of one sample (before the batch), from its EMA
// `stat` (loss or gradient norm), whether it was ever seen, its dataset
// index, the mean of that EMA over the seen samples (mean_stat, from the
// running sums), and the policy's threshold tensor (SelfPaced: lambda;
// SmallLoss: the cutoff EMA and index).
SWT_TABLE_HD float table_history_weight(int64_t policy, const double* params, float stat,
                                        bool seen, int64_t index, float mean_stat,
                                        const double* threshold) {
  if (!seen) return 1.0f;
  switch (policy) {
    case kLossEMA:
    case kGradNormEMA: {
      const float ratio = mean_stat > 0.0f ? stat / mean_stat : 1.0f;
      const double p = params[kPower];
      float r;
      if (p == 1.0) r = ratio;
      else if (p == 2.0) r = ratio * ratio;
      else if (p == 0.5) r = sqrtf(ratio);
      else if (p == 0.0) r = 1.0f;
      else r = powf(ratio, static_cast<float>(p));
      const float lo = static_cast<float>(params[kMinWeight]);
      const float hi = static_cast<float>(params[kMaxWeight]);
      return table_clamp(r, lo, hi);
    }
    case kSelfPacedHard:
      return stat < static_cast<float>(threshold[0]) ? 1.0f : 0.0f;
    case kSelfPacedSoft: {
      const float w = 1.0f - stat / static_cast<float>(threshold[0]);
      return w < 0.0f ? 0.0f : w;  // clamp_min: NaN stays NaN
    }
    case kSmallLoss: {
      // Kept: (EMA, index) up to the cutoff's, NaN ranking as +inf.
      const double s = stat != stat ? INFINITY : static_cast<double>(stat);
      const bool kept = s < threshold[0] || (s == threshold[0] && static_cast<double>(index) <= threshold[1]);
      return kept ? 1.0f : static_cast<float>(params[kForgottenWeight]);
    }
    default:
      return 1.0f;
  }
}

// GHM's bin of a gradient magnitude g (NaN counts as 1).
SWT_TABLE_HD int64_t table_ghm_bin(float g, int64_t bins) {
  g = g != g ? 1.0f : table_clamp(g, 0.0f, 1.0f);
  // g * bins >= 0: truncation is the floor
  int64_t b = static_cast<int64_t>(g * static_cast<float>(bins));
  return b < 0 ? 0 : (b > bins - 1 ? bins - 1 : b);
}

// GHM's density of a bin after this batch: S <- a S + (1 - a) R (R this
// batch's count), or R on the first batch.
SWT_TABLE_HD float table_ghm_density(float ema, float count, float a, float one_minus_a,
                                     bool first) {
  return first ? count : add_rn(mul_rn(a, ema), mul_rn(one_minus_a, count));
}

}  // namespace samplewt
