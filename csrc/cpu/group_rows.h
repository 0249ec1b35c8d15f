// Row functions of the group-advantage ops on the CPU, shared by the padded (group_cpu.cpp) and
// packed (packed_group_cpu.cpp) kernels: the reverse scan, the row moments and the finish pass, each
// over K rows of L contiguous positions. Each row goes through the same fp32/double operations in the
// same order whatever K is, so a row's bits depend only on its own data.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "../group_math.h"
#include "../r3hf_math.h"
#include "dot.h"  // R3HF_CLONES

namespace r3hf {
namespace cpu {

template <int K>
void rtg_block(const float* r, const bool* m, int64_t L, float gamma, bool skip, float* out) {
  float running[K];
  for (int k = 0; k < K; ++k) running[k] = 0.f;
  for (int64_t t = L - 1; t >= 0; --t) {
    for (int k = 0; k < K; ++k) {
      const int64_t i = k * L + t;
      out[i] = rtg_step(r[i], m[i], gamma, skip, running[k]);
    }
  }
}

// Row moments in double over kMomentLanes fixed lanes: vectorised over t, and the lane sums are added
// in a fixed order, so the bits do not depend on threads.
constexpr int kMomentLanes = 8;

inline double lane_total(const double* acc) {
  double total = 0.0;
  for (int l = 0; l < kMomentLanes; ++l) total += acc[l];
  return total;
}

// (Σ m, Σ m·x) of one row. (R3HF_CLONES, from dot.h: also compiled for AVX2, picked at load time.)
R3HF_CLONES static void masked_sum(const float* x, const bool* m, int64_t L, double& count, double& sum) {
  double acc_n[kMomentLanes] = {0.0}, acc_s[kMomentLanes] = {0.0};
  int64_t t = 0;
  for (; t + kMomentLanes <= L; t += kMomentLanes) {
    for (int l = 0; l < kMomentLanes; ++l) {
      const bool mk = m[t + l];
      acc_s[l] += static_cast<double>(mk ? x[t + l] : 0.f);
      acc_n[l] += mk ? 1.0 : 0.0;
    }
  }
  for (int l = 0; t < L; ++t, ++l) {
    acc_s[l] += static_cast<double>(m[t] ? x[t] : 0.f);
    acc_n[l] += m[t] ? 1.0 : 0.0;
  }
  count = lane_total(acc_n);
  sum = lane_total(acc_s);
}

// Σ m·(x − mean)² of one row (the second pass, around the row mean).
R3HF_CLONES static double masked_m2(const float* x, const bool* m, int64_t L, double mean) {
  double acc[kMomentLanes] = {0.0};
  int64_t t = 0;
  for (; t + kMomentLanes <= L; t += kMomentLanes) {
    for (int l = 0; l < kMomentLanes; ++l) {
      const double d = m[t + l] ? static_cast<double>(x[t + l]) - mean : 0.0;
      acc[l] += d * d;
    }
  }
  for (int l = 0; t < L; ++t, ++l) {
    const double d = m[t] ? static_cast<double>(x[t]) - mean : 0.0;
    acc[l] += d * d;
  }
  return lane_total(acc);
}

// Which statistics a row pass computes. The contract's five columns are all computed by default;
// group_advantages asks only for those its estimator reads (grpo and rloo need neither the scan
// nor an M2), and a column not computed is NaN, so a reader that wrongly used it would see it.
struct RowPassColumns {
  bool reward_m2 = true;      // STAT_M2_R
  bool returns_stats = true;  // STAT_SUM_G, STAT_M2_G (needs the reverse scan)
};

// The statistics [COUNT, SUM_R, M2_R, SUM_G, M2_G] of K rows, in double. The scan (holes="skip")
// goes into the thread's scratch G [K, L]; G itself is not written out: the finish pass
// recomputes it with the same fp32 operations (same bits), which saves writing and re-reading a
// [B, L] tensor.
// The statistics of one row from its rewards x [L] and, when cols.returns_stats, its scan G [L].
inline void row_stats(const float* x, const bool* mk, int64_t L, const float* G, RowPassColumns cols, double* s) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  double n, sum;
  masked_sum(x, mk, L, n, sum);
  s[STAT_COUNT] = n;
  s[STAT_SUM_R] = sum;
  s[STAT_M2_R] = cols.reward_m2 ? masked_m2(x, mk, L, n > 0 ? sum / n : 0.0) : nan;
  if (cols.returns_stats) {
    double n_g, sum_g;
    masked_sum(G, mk, L, n_g, sum_g);
    s[STAT_SUM_G] = sum_g;
    s[STAT_M2_G] = masked_m2(G, mk, L, n > 0 ? sum_g / n : 0.0);
  } else {
    s[STAT_SUM_G] = nan;
    s[STAT_M2_G] = nan;
  }
}

template <int K>
void row_pass_block(const float* r, const bool* m, int64_t L, float gamma, RowPassColumns cols, float* G,
                    double* stats) {
  if (cols.returns_stats) rtg_block<K>(r, m, L, gamma, true, G);
  for (int k = 0; k < K; ++k)
    row_stats(r + k * L, m + k * L, L, cols.returns_stats ? G + k * L : nullptr, cols, stats + k * kStats);
}

// K rows of advantages, one reverse scan (holes="skip"):
//   on_rewards false: G = reward_to_go(r) recomputed (the row pass's bits), A = m·(G − shift)·scale;
//   on_rewards true:  A = reward_to_go(m·(r − shift)·scale).
template <bool OnRewards>
inline float finish_step(float r, bool mk, float sh, float sc, float gamma, float& running) {
  if (OnRewards) {
    const float x = mk ? (r - sh) * sc : 0.f;
    return rtg_step(x, mk, gamma, true, running);
  }
  const float g = rtg_step(mk ? r : 0.f, mk, gamma, true, running);
  return mk ? (g - sh) * sc : 0.f;
}

template <int K>
void finish_block(const float* r, const bool* m, int64_t L, const float* shift, const float* scale, float gamma,
                  bool on_rewards, float* out) {
  float running[K], sh[K], sc[K];
  for (int k = 0; k < K; ++k) running[k] = 0.f, sh[k] = shift[k], sc[k] = scale[k];
  if (on_rewards) {
    for (int64_t t = L - 1; t >= 0; --t) {
      for (int k = 0; k < K; ++k) {
        const int64_t i = k * L + t;
        out[i] = finish_step<true>(r[i], m[i], sh[k], sc[k], gamma, running[k]);
      }
    }
    return;
  }
  for (int64_t t = L - 1; t >= 0; --t) {
    for (int k = 0; k < K; ++k) {
      const int64_t i = k * L + t;
      out[i] = finish_step<false>(r[i], m[i], sh[k], sc[k], gamma, running[k]);
    }
  }
}

// --- per-position baselines (issue 21; the contract: r3hf/_group_stats.py, steps 1p-3p) -----------

// Rows grouped by their dense id: order[offsets[g] .. offsets[g+1]) are the rows of group g in row
// order (a stable counting sort). The tables are then filled one group per task, each group's rows
// in row order, so every sum is added in one fixed order whatever the threads: no racy scatter and
// no per-thread copies of the [n_groups, W] tables.
struct GroupRows {
  std::vector<int64_t> offsets, order;
  GroupRows(const int64_t* ids, int64_t B, int64_t n_groups) : offsets(n_groups + 1, 0), order(B) {
    for (int64_t i = 0; i < B; ++i) {
      TORCH_CHECK_VALUE(ids[i] >= 0 && ids[i] < n_groups, "position ids must be dense ids in [0, n_groups = ",
                        n_groups, "), got ", ids[i]);
      ++offsets[ids[i] + 1];
    }
    for (int64_t g = 0; g < n_groups; ++g) offsets[g + 1] += offsets[g];
    std::vector<int64_t> next(offsets.begin(), offsets.end() - 1);
    for (int64_t i = 0; i < B; ++i) order[next[ids[i]]++] = i;
  }
};

// One row's contribution to its group's tables: G at its p-th generated token added to sum[p] (and
// G² to sq[p] when sq is given), in increasing p; -> G at its last generated token (0 if none).
// The row must have at most W generated tokens (the caller's width).
inline double add_positions(const float* G, const bool* m, int64_t L, double* sum, double* sq) {
  int64_t p = 0;
  float last = 0.f;
  for (int64_t t = 0; t < L; ++t) {
    if (!m[t]) continue;
    const double g = static_cast<double>(G[t]);
    sum[p] += g;
    if (sq != nullptr) sq[p] += g * g;
    ++p;
    last = G[t];
  }
  return static_cast<double>(last);
}

// Σ m of one row (its generated tokens).
inline int64_t generated(const bool* m, int64_t L) {
  int64_t n = 0;
  for (int64_t t = 0; t < L; ++t) n += m[t] ? 1 : 0;
  return n;
}

// One finish step with per-position tables: G recomputed as finish_step<false> does (the same
// bits), A = m·(G − shift[p])·scale[p]; `p` counts down from n − 1 over the generated tokens.
inline float position_finish_step(float r, bool mk, const float* shift, const float* scale, float gamma,
                                  float& running, int64_t& p) {
  const float g = rtg_step(mk ? r : 0.f, mk, gamma, true, running);
  if (!mk) return 0.f;
  const float a = (g - shift[p]) * scale[p];
  --p;
  return a;
}

}  // namespace cpu
}  // namespace r3hf
