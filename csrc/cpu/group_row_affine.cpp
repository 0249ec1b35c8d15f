// Step 2 of the group contract on the CPU for baseline="row" (r3hf/_group_stats.py, `affine`;
// issue 21): per-row (shift, scale) f32 [B] from the row pass's stats f64 [B, 5] and the group ids
// index [B], for one process (no `group=`: the torch form stays the path across ranks, which
// all-gathers the statistics first).
//
// The torch form is ~40 tiny ops on [B] tensors (sort, index_add, gathers, where), ~0.3-0.8 ms of
// Python and dispatch at B = 1024, a fifth of a whole grpo op; here it is a sort of B ids and two
// loops. The same float64 formulas as `affine` (group sums in row order, Chan's merge for the
// token-level statistics), so the results agree to float64 rounding before the cast to float32.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "../group_math.h"
#include "cpu_common.h"

namespace r3hf {
namespace {

using at::Tensor;

enum class Est { kGrpo, kRloo, kReinforcePp, kReinforcePpBaseline, kGrpoProcess };
using Scale = cpu::GroupScale;

Est parse_row_estimator(c10::string_view name) {
  if (name == "grpo") return Est::kGrpo;
  if (name == "rloo") return Est::kRloo;
  if (name == "reinforce_pp") return Est::kReinforcePp;
  if (name == "reinforce_pp_baseline") return Est::kReinforcePpBaseline;
  if (name == "grpo_process") return Est::kGrpoProcess;
  TORCH_CHECK_VALUE(false, "estimator must be one of ['grpo', 'rloo', 'reinforce_pp', 'reinforce_pp_baseline', "
                    "'grpo_process'], got '", std::string(name), "'");
  return Est::kGrpo;
}

// Chan's merge of rows' (count, sum, M2) -> (N, mean, M2) of their tokens, as `_merge`.
struct Merged {
  double n = 0.0, mean = 0.0, m2 = 0.0;
};

template <typename Rows, typename Sum>
Merged merge(const Rows& rows, const double* n, Sum total, const double* m2) {
  Merged out;
  double t = 0.0;
  for (int64_t i : rows) out.n += n[i], t += total(i);
  out.mean = t / std::max(out.n, 1.0);
  for (int64_t i : rows) {
    const double row_mean = n[i] > 0 ? total(i) / std::max(n[i], 1.0) : 0.0;
    const double d = row_mean - out.mean;
    out.m2 += m2[i] + n[i] * (d * d);
  }
  return out;
}

std::tuple<Tensor, Tensor> group_row_affine_cpu(const Tensor& stats_in, const Tensor& index_in,
                                                c10::string_view estimator, double eps, c10::string_view scale_name) {
  cpu::check_cpu(stats_in, "stats");
  const Est est = parse_row_estimator(estimator);
  const Scale scale = cpu::parse_group_scale(scale_name);
  TORCH_CHECK_VALUE(stats_in.dim() == 2 && stats_in.size(1) == kStats, "stats must be [B, ", kStats, "], got ",
                    stats_in.sizes());
  const int64_t B = stats_in.size(0);
  TORCH_CHECK_VALUE(index_in.dim() == 1 && index_in.numel() == B, "index must be [B] = [", B, "], got ",
                    index_in.sizes());
  const Tensor stats = stats_in.to(at::kDouble).contiguous(), index = cpu::as_long(index_in).contiguous();
  std::vector<double> col[kStats];
  const double* p_s = stats.data_ptr<double>();
  for (int c = 0; c < kStats; ++c) {
    col[c].resize(B);
    for (int64_t i = 0; i < B; ++i) col[c][i] = p_s[i * kStats + c];
  }
  const double *n = col[STAT_COUNT].data(), *s = col[STAT_SUM_R].data(), *m2_r = col[STAT_M2_R].data();
  const double *sum_g = col[STAT_SUM_G].data(), *m2_g = col[STAT_M2_G].data();

  // Groups: runs of equal ids after a stable sort, each group's rows in row order.
  const int64_t* ids = index.data_ptr<int64_t>();
  std::vector<int64_t> order(B);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return ids[a] < ids[b]; });
  std::vector<std::pair<int64_t, int64_t>> groups;  // [begin, end) in order
  for (int64_t j = 0; j < B;) {
    int64_t e = j + 1;
    while (e < B && ids[order[e]] == ids[order[j]]) ++e;
    groups.emplace_back(j, e);
    j = e;
  }
  auto rows_of = [&](const std::pair<int64_t, int64_t>& g) {
    return c10::ArrayRef<int64_t>(order.data() + g.first, g.second - g.first);
  };

  std::vector<double> shift(B, 0.0), mult(B, 1.0);
  // `_mean_std` of s per group: mean 0, std 1 for a singleton.
  auto group_mean_std = [&](c10::ArrayRef<int64_t> rows, double& mean, double& std_) {
    const double k = static_cast<double>(rows.size());
    double t = 0.0;
    for (int64_t i : rows) t += s[i];
    mean = t / k;
    double sq = 0.0;
    for (int64_t i : rows) sq += (s[i] - mean) * (s[i] - mean);
    std_ = std::sqrt(sq / std::max(k - 1.0, 1.0));
    if (k < 2) mean = 0.0, std_ = 1.0;
  };
  std::vector<int64_t> in_order(B);
  std::iota(in_order.begin(), in_order.end(), 0);
  const c10::ArrayRef<int64_t> batch_rows(in_order);

  if (est == Est::kGrpo) {
    double batch_std = 1.0;
    if (scale == Scale::kBatch && B >= 2) {  // s.std(): unbiased over the batch
      double t = 0.0, sq = 0.0;
      for (int64_t i = 0; i < B; ++i) t += s[i];
      const double mean = t / static_cast<double>(B);
      for (int64_t i = 0; i < B; ++i) sq += (s[i] - mean) * (s[i] - mean);
      batch_std = std::sqrt(sq / static_cast<double>(B - 1));
    }
    for (const auto& g : groups) {
      double mean, std_;
      group_mean_std(rows_of(g), mean, std_);
      if (scale == Scale::kBatch) std_ = batch_std;
      for (int64_t i : rows_of(g)) shift[i] = mean, mult[i] = scale == Scale::kNone ? 1.0 : 1.0 / (std_ + eps);
    }
  } else if (est == Est::kRloo) {
    for (const auto& g : groups) {
      const auto rows = rows_of(g);
      const double k = static_cast<double>(rows.size());
      double t = 0.0;
      for (int64_t i : rows) t += s[i];
      const double mean = t / k;  // leave-one-out mean (k·mean − s_i)/(k − 1); a singleton keeps its return
      for (int64_t i : rows) shift[i] = k > 1 ? (k * mean - s[i]) / (k - 1.0) : 0.0;
    }
  } else if (est == Est::kReinforcePp || est == Est::kReinforcePpBaseline) {
    std::vector<double> base(B, 0.0);
    if (est == Est::kReinforcePpBaseline) {
      for (const auto& g : groups) {
        double mean, std_;
        group_mean_std(rows_of(g), mean, std_);
        for (int64_t i : rows_of(g)) base[i] = mean;
      }
    }
    // veRL's masked_whiten over every generated token of G − base (base 0 for reinforce_pp).
    const Merged w = merge(batch_rows, n, [&](int64_t i) { return sum_g[i] - n[i] * base[i]; }, m2_g);
    const double inv = 1.0 / std::sqrt(w.m2 / std::max(w.n - 1.0, 1.0) + eps);
    for (int64_t i = 0; i < B; ++i) shift[i] = base[i] + w.mean, mult[i] = inv;
  } else {  // grpo_process: token-level statistics of the rewards per group
    auto token_std = [&](const Merged& t) { return t.n < 2 ? 1.0 : std::sqrt(t.m2 / std::max(t.n - 1.0, 1.0)); };
    const auto rew = [&](int64_t i) { return s[i]; };
    double batch_std = 1.0;
    if (scale == Scale::kBatch) batch_std = token_std(merge(batch_rows, n, rew, m2_r));
    for (const auto& g : groups) {
      const Merged t = merge(rows_of(g), n, rew, m2_r);
      const double mean = t.n < 2 ? 0.0 : t.mean;
      const double std_ = scale == Scale::kBatch ? batch_std : token_std(t);
      for (int64_t i : rows_of(g)) shift[i] = mean, mult[i] = scale == Scale::kNone ? 1.0 : 1.0 / (std_ + eps);
    }
  }
  auto f32 = stats_in.options().dtype(at::kFloat);
  Tensor o_shift = at::empty({B}, f32), o_mult = at::empty({B}, f32);
  float *p_shift = o_shift.data_ptr<float>(), *p_mult = o_mult.data_ptr<float>();
  for (int64_t i = 0; i < B; ++i) p_shift[i] = static_cast<float>(shift[i]), p_mult[i] = static_cast<float>(mult[i]);
  return {o_shift, o_mult};
}

}  // namespace

TORCH_LIBRARY_IMPL(r3hf, CPU, m) { m.impl("group_row_affine", &group_row_affine_cpu); }

}  // namespace r3hf
