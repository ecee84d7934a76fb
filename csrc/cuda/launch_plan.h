// Launch planning of the CUDA kernels: pure host code. From the argument
// block alone it picks each kernel's regime, vector width, lanes per row,
// grid and workspace layout; the tests run it on the CPU (tests/cuda_emu).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernel_args.h"

namespace samplewt {
namespace cuda {
namespace detail {

// Threads per block of the kernels.
constexpr int kSmallBlock = 256;   // small rows: G lanes per row
constexpr int kBigBlockMax = 512;  // large C: one block per row
constexpr int kSplitBlock = 256;   // split rows: one block per chunk
constexpr int kChunkBlock = 256;   // element-wise: one block per chunk

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

// Grid of the small kernels over n rows or samples, group lanes each: at
// most 8 blocks per multiprocessor, the blocks striding over the rest.
inline int64_t small_grid(int64_t n, int group, int64_t sms) {
  return max64(1, min64(ceil_div(n, kSmallBlock / group), sms * 8));
}

// What the plans of both families hold alike.
struct LaunchPlan {
  bool run = false;   // anything to compute (rows or samples, and columns, > 0)
  int regime = 0;     // RowRegime or ElemRegime
  int vw = 1;         // elements per access
  int group = 32;     // small kernels: lanes per row or sample
  int64_t grid = 1;   // blocks of the main kernel(s)
  int n_denom = 0;    // pre-pass blocks (0: denominator is denom_const)
  double denom_const = 0.0;
  int64_t n_loss_parts = 0;  // the main kernels' partial sums of the loss
  size_t off_denom = 0, off_loss = 0;
  size_t bytes = 0;   // workspace
};

// The final reduction of plan p (p.run already set) and the workspace's
// first two regions, for its partials. The mean divides by the sum of a
// pre-pass of n_prepass blocks (n_prepass > 0), or else by the constant
// `count`; sum and mean add up n_loss_parts partials of the main kernels.
// Returns the workspace offset past the two regions.
inline size_t plan_reduction(LaunchPlan& p, int reduction, int n_prepass, double count,
                             int64_t n_loss_parts) {
  if (reduction == kMean) {
    if (p.run && n_prepass > 0) {
      p.n_denom = n_prepass;
    } else {
      p.denom_const = p.run ? count : 0.0;
    }
  }
  if (reduction != kNone && p.run) p.n_loss_parts = n_loss_parts;
  size_t off = 0;
  p.off_denom = off;
  off += align_up(sizeof(double) * p.n_denom);
  p.off_loss = off;
  off += align_up(sizeof(double) * p.n_loss_parts);
  return off;
}

// Bytes of the accumulation type: double for double inputs, else float.
inline size_t acc_bytes(size_t elem) { return elem == 8 ? 8 : 4; }

enum RowRegime : int { kRowSmall = 0, kRowBlock = 1, kRowSplit = 2 };

struct RowPlan : LaunchPlan {
  int block = 256;    // threads per block of the main kernel(s)
  int nch = 1;        // split: chunks per row
  int chunk = 0;      // split: elements per chunk
  size_t off_part = 0, off_xy = 0, off_stat = 0;
};

inline RowPlan plan_row_loss(const RowArgs& a, size_t elem) {
  RowPlan p;
  const int64_t R = a.rows, C = a.cols;
  const int64_t sms = max64(1, a.num_sms);
  p.run = R > 0 && C > 0;
  const bool prob = a.kind == kCrossEntropyProb;
  const bool vec = aligned16(a.input, a.ld_input, R, elem) &&
                   aligned16(a.grad, a.ld_grad, R, elem) &&
                   (!prob || aligned16(a.target_prob, a.ld_target, R, elem));
  p.vw = vec ? static_cast<int>(16 / elem) : 1;
  const int64_t nv = ceil_div(max64(C, 1), p.vw);
  if (nv <= 256) {
    p.regime = kRowSmall;
    p.group = nv <= 2 ? 1 : (nv <= 24 ? 4 : 32);
    p.block = kSmallBlock;
    p.grid = small_grid(R, p.group, sms);
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
  // Index targets and sample weights need the pre-pass; probability
  // targets without sample weights divide by the number of rows.
  const int n_prepass = (!prob || a.sample_weight) ? prepass_grid(R, 4 * 256) : 0;
  size_t off = plan_reduction(p, a.reduction, n_prepass, static_cast<double>(R),
                              p.regime == kRowSplit ? R : p.grid);
  if (p.regime == kRowSplit && p.run) {
    const size_t acc = acc_bytes(elem);
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

struct ElemPlan : LaunchPlan {
  int64_t nch = 1, chunk = 0;  // chunk regime: chunks per sample, elements per chunk
  size_t off_ws = 0;
};

inline ElemPlan plan_elem_loss(const ElemArgs& a, size_t elem) {
  ElemPlan p;
  const int64_t N = a.samples, S = a.per_sample;
  const int64_t sms = max64(1, a.num_sms);
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
    p.grid = small_grid(N, p.group, sms);
  } else {
    p.regime = kElemChunk;
    p.chunk = static_cast<int64_t>(kChunkBlock) * p.vw * 4;
    p.nch = ceil_div(S, p.chunk);
    p.grid = max64(1, min64(N * p.nch, sms * 8));
  }
  // Sample weights, or the weights that mse/l1 divide by, need the pre-pass
  // (a warp per sample when the weights are full); else the mean divides
  // by the number of elements.
  const bool weight_share = a.mean_over_weight && a.weight != nullptr;
  int n_prepass = 0;
  if (a.sample_weight || weight_share) {
    n_prepass = (weight_share && a.weight_full) ? prepass_grid(N, 8) : prepass_grid(N, 4 * 256);
  }
  size_t off = plan_reduction(p, a.reduction, n_prepass,
                              static_cast<double>(N) * static_cast<double>(S), p.grid);
  if (p.regime == kElemChunk && p.nch > 1 && a.stats && p.run) {
    p.off_ws = off;
    off += align_up(acc_bytes(elem) * 3 * N * p.nch);
  }
  p.bytes = off > 0 ? off : 256;
  return p;
}

// The backward's scaling (grad_scale.cu): 128-bit accesses where grad is
// 16-byte aligned and no vector straddles two rows of different scales;
// blocks of kScaleBlock threads, each with four vectors in flight, at most
// 8 resident blocks per multiprocessor striding over the rest.
constexpr int kScaleBlock = 256;

struct ScalePlan {
  int vw = 1;
  int64_t grid = 1;
};

inline ScalePlan plan_scale_grad(const ScaleArgs& a, size_t elem) {
  ScalePlan p;
  const int vmax = static_cast<int>(16 / elem);
  const bool vec = aligned16(a.grad, 0, 1, elem) && (!a.per_row || a.cols % vmax == 0);
  p.vw = vec ? vmax : 1;
  p.grid = max64(1, min64(ceil_div(ceil_div(a.numel, p.vw), 4 * kScaleBlock),
                          max64(1, a.num_sms) * 8));
  return p;
}

}  // namespace detail
}  // namespace cuda
}  // namespace samplewt
