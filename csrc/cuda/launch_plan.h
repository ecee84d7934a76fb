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

inline RowPlan plan_row_loss(const RowArgs& a, size_t elem) {
  RowPlan p;
  const int64_t R = a.rows, C = a.cols;
  const int64_t sms = max64(1, a.num_sms);
  const size_t acc = elem == 8 ? 8 : 4;
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

inline ElemPlan plan_elem_loss(const ElemArgs& a, size_t elem) {
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

}  // namespace detail
}  // namespace cuda
}  // namespace samplewt
