// The adaptive table's steps on the CPU; see table_cpu.h and table_step.h.
#include "table_cpu.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <cmath>
#include <limits>
#include <vector>

namespace samplewt {
namespace cpu {

using at::Tensor;

namespace {

// A float's bits as an unsigned key of the same order (-inf lowest, +inf
// highest, -0 equal to +0 as the comparison has it; no NaN comes here).
inline uint32_t ordered_key(float f) {
  f = f + 0.0f;  // -0 -> +0
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  // Negative: all bits flipped; otherwise the sign bit set. No branch.
  return u ^ (static_cast<uint32_t>(static_cast<int32_t>(u) >> 31) | 0x80000000u);
}

// The index of x's highest set bit (x != 0).
inline int highest_bit(uint32_t x) {
#if defined(__GNUC__)
  return 31 - __builtin_clz(x);
#else
  int b = 0;
  while (x >>= 1) ++b;
  return b;
#endif
}

// GHM's bins of the batch and its density after the batch (table_math.h).
struct GhmBatch {
  std::vector<int64_t> bin;
  std::vector<float> density;
  float valid_count = 0.0f;
};

void ghm_batch(const Table& t, const float* stats, const bool* valid, GhmBatch& out) {
  const int64_t N = t.batch, M = static_cast<int64_t>(t.params[kBins]);
  out.bin.resize(N);
  out.valid_count = 0.0f;
  thread_local std::vector<float> hist_buffer;
  thread_local std::vector<int64_t> count_buffer;
  std::vector<float>& hist = hist_buffer;
  hist.assign(M, 0.0f);
  if (N <= (int64_t{1} << 24)) {
    // Integer counts, in two interleaved sets (a run of equal bins does not
    // wait on one counter): a float sum of ones in batch order holds the
    // same integers up to 2^24.
    std::vector<int64_t>& count = count_buffer;
    count.assign(2 * M, 0);
    int64_t valid_count = 0;
    for (int64_t i = 0; i < N; ++i) {
      const int64_t b = table_ghm_bin(stats[i * 3 + kGStat], M);
      const int64_t v = valid == nullptr || valid[i] ? 1 : 0;
      out.bin[i] = b;
      count[(i & 1) * M + b] += v;
      valid_count += v;
    }
    for (int64_t j = 0; j < M; ++j) hist[j] = static_cast<float>(count[j] + count[M + j]);
    out.valid_count = static_cast<float>(valid_count);
  } else {
    for (int64_t i = 0; i < N; ++i) {
      out.bin[i] = table_ghm_bin(stats[i * 3 + kGStat], M);
      const float v = valid == nullptr || valid[i] ? 1.0f : 0.0f;
      hist[out.bin[i]] += v;
      out.valid_count += v;
    }
  }
  const float a = static_cast<float>(t.params[kBinMomentum]);
  const float one_minus_a = static_cast<float>(1.0 - t.params[kBinMomentum]);
  const bool first = t.bin_steps.data_ptr<int64_t>()[0] <= 0;
  const float* ema = t.bin_ema.data_ptr<float>();
  out.density.resize(M);
  for (int64_t j = 0; j < M; ++j) {
    out.density[j] = table_ghm_density(ema[j], hist[j], a, one_minus_a, first);
  }
}

// Per-thread vectors reused from call to call (same batch size, nobody else
// holding them): a small batch's whole table step costs about as much as
// one at::empty.
enum ScratchSlot { kValidScratch = 0, kWeightScratch = 1, kNumScratch };

Tensor scratch(ScratchSlot slot, int64_t n, at::ScalarType dtype) {
  thread_local Tensor buffers[kNumScratch];
  Tensor& b = buffers[slot];
  if (!b.defined() || b.numel() != n || b.scalar_type() != dtype || b.use_count() != 1) {
    b = at::empty({n}, at::TensorOptions().dtype(dtype));
  }
  return b;
}

const bool* valid_ptr(const Tensor& valid) {
  return valid.defined() ? valid.data_ptr<bool>() : nullptr;
}

}  // namespace

void table_check_indices(const Table& t) {
  const int64_t* idx = t.indices.data_ptr<int64_t>();
  for (int64_t i = 0; i < t.batch; ++i) {
    TORCH_CHECK_INDEX(idx[i] >= 0 && idx[i] < t.num_samples, "samplewt_ops: indices contains ",
                      idx[i], ", outside the table's range [0, ", t.num_samples - 1, "]");
  }
}

Tensor table_valid(const Table& t, const Tensor& target, int64_t ignore_index) {
  Tensor valid = scratch(kValidScratch, t.batch, at::kBool);
  bool* v = valid.data_ptr<bool>();
  const Tensor y = target.is_contiguous() ? target : target.contiguous();
  AT_DISPATCH_INDEX_TYPES(y.scalar_type(), "samplewt_table_valid", [&] {
    const index_t* yp = y.data_ptr<index_t>();
    if (t.positions == 1) {
      for (int64_t i = 0; i < t.batch; ++i) v[i] = yp[i] != ignore_index;
      return;
    }
    for (int64_t i = 0; i < t.batch; ++i) {
      bool any = false;
      for (int64_t p = 0; p < t.positions && !any; ++p) any = yp[i * t.positions + p] != ignore_index;
      v[i] = any;
    }
  });
  return valid;
}

Tensor table_weights(const Table& t, const Tensor& valid) {
  const int64_t N = t.batch;
  Tensor out = scratch(kWeightScratch, N, at::kFloat);
  float* w = out.data_ptr<float>();
  const double* params = t.params.data();
  // History policies: the table before the batch.
  const int stat = t.policy == kGradNormEMA ? kGradNormStat : kLossStat;
  const float* ema = t.ema.data_ptr<float>() + stat * t.stat_stride;
  const int64_t ss = t.sample_stride;
  const int64_t* seen = t.seen_count.data_ptr<int64_t>();
  const int64_t* idx = t.indices.data_ptr<int64_t>();
  const double* sums = t.stat_sum.data_ptr<double>();
  const double n_seen = sums[2];
  const float mean = static_cast<float>(n_seen > 0 ? sums[stat] / n_seen : 0.0);
  const double* thr = t.threshold.defined() ? t.threshold.data_ptr<double>() : nullptr;
  for (int64_t i = 0; i < N; ++i) {
    const int64_t s = idx[i];
    w[i] = table_history_weight(t.policy, params, ema[s * ss], seen[s] > 0, s, mean, thr);
  }
  return out;
}

namespace {

// A per-batch policy's weights of the batch, from its statistics `st` (N, 3)
// and the table before the batch (GHM: its density after the batch, `ghm`).
void per_batch_weights(const Table& t, const float* st, const bool* v, const GhmBatch* ghm,
                       float* w) {
  const int64_t N = t.batch;
  const double* params = t.params.data();
  if (t.policy == kOHEM) {
    const int64_t num = static_cast<int64_t>(params[kKeepNum]);
    const int64_t den = static_cast<int64_t>(params[kKeepDen]);
    const int64_t k = std::min((num * N + den - 1) / den, N);
    // Largest losses first (NaN above everything, invalid samples last),
    // ties by position: the k-th largest key by a radix select, then every
    // key above it and the first keys equal to it. Keys are the losses' bits
    // mapped to an unsigned order; an invalid sample ranks as a loss of -inf
    // (after it, by position).
    thread_local std::vector<uint32_t> key_buffer, candidate_buffer;
    std::vector<uint32_t>& key_vec = key_buffer;
    std::vector<uint32_t>& cand_vec = candidate_buffer;
    key_vec.resize(N);
    cand_vec.resize(N);
    uint32_t* key = key_vec.data();
    uint32_t* cand = cand_vec.data();
    constexpr float kInf = std::numeric_limits<float>::infinity();
    uint32_t any = 0, all = ~0u;  // the keys' bits: set in any, set in all
    for (int64_t i = 0; i < N; ++i) {
      const float l = st[i * 3 + kLossStat];
      const uint32_t c = ordered_key((v != nullptr && !v[i]) ? -kInf : (l != l ? kInf : l));
      key[i] = c;
      any |= c;
      all &= c;
    }
    // The select: a histogram of 8 bits of the candidates (at first every
    // key), from the highest bit in which they differ (a batch's losses share
    // their sign and leading exponent bits), picks the bits of the k-th
    // largest; the candidates shrink to the keys with those bits. At most
    // four passes, each over fewer keys, and no comparison sort. At the end
    // `rank` is the key's rank among the keys equal to it: the ties kept.
    uint32_t kth = 0;
    int64_t rank = k;
    const uint32_t* src = key;
    for (int64_t n = N; k > 0;) {
      if (any == all) {  // the candidates are equal: they are the key
        kth = src[0];
        break;
      }
      const int top = highest_bit(any ^ all);
      const int shift = top >= 7 ? top - 7 : 0;
      // Two histograms, even and odd positions: a run of equal bytes does
      // not wait on one counter.
      int32_t count[2][256] = {};
      int64_t i = 0;
      for (; i + 1 < n; i += 2) {
        ++count[0][(src[i] >> shift) & 0xffu];
        ++count[1][(src[i + 1] >> shift) & 0xffu];
      }
      if (i < n) ++count[0][(src[i] >> shift) & 0xffu];
      uint32_t b = 255;
      for (; b > 0 && count[0][b] + count[1][b] < rank; --b) rank -= count[0][b] + count[1][b];
      int64_t m = 0;
      any = 0;
      all = ~0u;
      for (int64_t j = 0; j < n; ++j) {
        const uint32_t c = src[j];
        const bool in = ((c >> shift) & 0xffu) == b;
        cand[m] = c;
        m += in;
        any |= in ? c : 0u;
        all &= in ? c : ~0u;
      }
      src = cand;
      n = m;
    }
    int64_t ties = k > 0 ? rank : 0;  // the first `ties` keys equal to kth, by position
    for (int64_t i = 0; i < N; ++i) {
      const uint32_t c = key[i];
      const bool tie = c == kth && ties > 0;
      ties -= tie;
      const bool keep = k > 0 && (c > kth || tie) && (v == nullptr || v[i]);
      w[i] = keep ? 1.0f : 0.0f;
    }
    return;
  }
  // GHM: one weight per bin (a division per bin, not per sample).
  const float bins = static_cast<float>(params[kBins]);
  const int64_t M = static_cast<int64_t>(ghm->density.size());
  thread_local std::vector<float> bin_weight_buffer;
  std::vector<float>& bin_weight = bin_weight_buffer;
  bin_weight.resize(M);
  for (int64_t j = 0; j < M; ++j) {
    const float d = mul_rn(ghm->density[j], bins);
    bin_weight[j] = ghm->valid_count / (d > 0.0f ? d : 1.0f);
  }
  for (int64_t i = 0; i < N; ++i) {
    const float wi = bin_weight[ghm->bin[i]];
    w[i] = v == nullptr ? wi : wi * (v[i] ? 1.0f : 0.0f);
  }
}

}  // namespace

Tensor table_update(const Table& t, const Tensor& stats, const Tensor& valid) {
  const int64_t N = t.batch;
  const Tensor st_c = stats.contiguous();
  const float* st = st_c.data_ptr<float>();
  const bool* v = valid_ptr(valid);
  // Per-batch policies: the batch's weights, from the table before the update.
  Tensor weights;
  thread_local GhmBatch ghm_buffer;  // reused: no allocation per step
  GhmBatch& ghm = ghm_buffer;
  if (t.policy == kGHM) ghm_batch(t, st, v, ghm);
  if (table_per_batch(t.policy)) {
    weights = scratch(kWeightScratch, N, at::kFloat);
    per_batch_weights(t, st, v, &ghm, weights.data_ptr<float>());
  }
  const int64_t* idx = t.indices.data_ptr<int64_t>();
  float* ema = t.ema.data_ptr<float>();
  const int64_t js = t.stat_stride, ss = t.sample_stride;
  int64_t* seen = t.seen_count.data_ptr<int64_t>();
  double* sums = t.stat_sum.data_ptr<double>();
  const bool track_g = t.policy == kGHM;
  const float m = static_cast<float>(t.params[kMomentum]);
  const float one_minus_m = static_cast<float>(1.0 - t.params[kMomentum]);

  // Equal indices grouped in batch order, each group summing its
  // observations; groups are applied in the order of their first occurrence.
  // A sample's group is marked in its own seen_count entry while the batch
  // runs (-1 - group: counts are never negative) and the count restored when
  // the group is applied: O(batch), and no memory but the entries the update
  // touches anyway.
  struct Group {
    int64_t sample;
    int64_t seen;  // seen_count before the batch
    int64_t count;
    double obs[3];
  };
  thread_local std::vector<Group> group_buffer;  // per thread, reused
  std::vector<Group>& group_vec = group_buffer;
  if (group_vec.size() < static_cast<size_t>(N)) group_vec.resize(N);
  Group* groups = group_vec.data();
  int64_t num_groups = 0;
  for (int64_t i = 0; i < N; ++i) {
    const int64_t s = idx[i];
    const int64_t mark = seen[s];
    // A mark names a group of this batch with this sample; anything else
    // (a count, even a corrupt negative one) opens a group.
    const int64_t g = -1 - mark;
    const bool open = mark >= 0 || g >= num_groups || groups[g].sample != s;
    const bool counted = v == nullptr || v[i];
    const double loss = counted ? static_cast<double>(st[i * 3 + kLossStat]) : 0.0;
    const double norm = counted ? static_cast<double>(st[i * 3 + kGradNormStat]) : 0.0;
    const double gs = track_g && counted ? static_cast<double>(table_g_observation(st[i * 3 + kGStat])) : 0.0;
    if (open) {
      // 0.0 + x, as a sum from 0 has it (-0 becomes +0).
      groups[num_groups] = {s, mark, counted ? 1 : 0, {0.0 + loss, 0.0 + norm, 0.0 + gs}};
      seen[s] = -1 - num_groups++;
    } else if (counted) {
      Group& grp = groups[g];
      grp.obs[0] += loss;
      grp.obs[1] += norm;
      grp.obs[2] += gs;
      ++grp.count;
    }
  }
  // The running sums in registers, added to in the same order.
  double sum[3] = {sums[0], sums[1], sums[2]};
  for (int64_t gi = 0; gi < num_groups; ++gi) {
    const Group& g = groups[gi];
    const int64_t s = g.sample;
    seen[s] = g.seen + g.count;
    if (g.count == 0) continue;
    const bool seen_before = g.seen > 0;
    // The loss and gradient-norm EMAs, with their running sums; GHM's g EMA.
    for (int j = 0; j < 2; ++j) {
      float& e = ema[j * js + s * ss];
      const float old = e;
      e = table_ema_step(old, g.obs[j], g.count, m, one_minus_m, seen_before);
      sum[j] += static_cast<double>(e) - (seen_before ? static_cast<double>(old) : 0.0);
    }
    if (track_g) {
      float& e = ema[kGStat * js + s * ss];
      e = table_ema_step(e, g.obs[kGStat], g.count, m, one_minus_m, seen_before);
    }
    if (!seen_before) sum[2] += 1.0;
  }
  sums[0] = sum[0];
  sums[1] = sum[1];
  sums[2] = sum[2];
  if (track_g) {
    std::copy(ghm.density.begin(), ghm.density.end(), t.bin_ema.data_ptr<float>());
    t.bin_steps.data_ptr<int64_t>()[0] += 1;
  }
  return weights;
}

}  // namespace cpu
}  // namespace samplewt
