// Step 2p of the group contract on the CPU (r3hf/_group_stats.py, `affine_position`; issue 21):
// the per-position (shift, scale) tables f32 [n_groups, W] from the row pass's stats [R, 5], sums
// f64 [2, n_groups, W] and last f64 [R] (R rows, or packed sequences), for one process (no
// `group=`: the torch form stays the path across ranks, which all-reduces the tables).
//
// The torch form is ~40 ops over [n_groups, W] tables (index_put, cumsum, where, ...), each one a
// pass over memory; here it is one pass per group over its [W] slice. A group's ended rows ("held"
// at their last G) are walked in order of their length instead of a histogram + cumsum. Everything
// is float64 and summed per group in a fixed order, then over groups in group order, so the bits do
// not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "../group_math.h"
#include "../op_args.h"
#include "cpu_common.h"
#include "group_position_rows.h"
#include "group_rows.h"

namespace r3hf {
namespace {

using at::Tensor;

enum class Est { kRloo, kGrpo, kReinforcePpBaseline };
using Scale = cpu::GroupScale;

Est parse_position_estimator(c10::string_view name) {
  if (name == "rloo") return Est::kRloo;
  if (name == "grpo") return Est::kGrpo;
  if (name == "reinforce_pp_baseline") return Est::kReinforcePpBaseline;
  TORCH_CHECK_VALUE(false, "baseline='position' is defined for estimator in ['grpo', 'rloo', 'reinforce_pp_baseline'], "
                    "got '", std::string(name), "'");
  return Est::kRloo;
}

// The rows of one group that end before some position: (n_i, last_i) in increasing n_i, walked
// forward along p. held() gives the count, Σ last and Σ last² of the rows with n_i <= p.
struct Held {
  std::vector<std::pair<double, double>> rows;  // (n_i, last_i) sorted by n_i (stable: row order)
  size_t next = 0;
  double count = 0.0, sum = 0.0, sq = 0.0;
  void reset() { next = 0, count = 0.0, sum = 0.0, sq = 0.0; }
  void advance(int64_t p) {
    while (next < rows.size() && rows[next].first <= static_cast<double>(p)) {
      const double v = rows[next].second;
      count += 1.0, sum += v, sq += v * v;
      ++next;
    }
  }
};

// Per-group statistics at one position p, shared by every estimator.
struct At {
  double mu, S1, S2;
};

// o[p] = 1/(sqrt(max(0, (S2 − S1·(S1/c))/(c − 1))) + eps), S1 = s1[p] + hs, S2 = s2[p] + hq, over n
// positions (grpo's per-position scale; sqrt is correctly rounded in both forms).
#ifdef R3HF_SCAN_AVX2
R3HF_AVX2 void group_std_mult_avx2(const double* s1, const double* s2, int64_t n, double hs, double hq, double cm,
                                   double c1, double eps, float* o) {
  const __m256d vhs = _mm256_set1_pd(hs), vhq = _mm256_set1_pd(hq), vcm = _mm256_set1_pd(cm);
  const __m256d vc1 = _mm256_set1_pd(c1), veps = _mm256_set1_pd(eps), one = _mm256_set1_pd(1.0);
  const __m256d zero = _mm256_setzero_pd();
  int64_t p = 0;
  for (; p + 4 <= n; p += 4) {
    const __m256d S1 = _mm256_add_pd(_mm256_loadu_pd(s1 + p), vhs);
    const __m256d S2 = _mm256_add_pd(_mm256_loadu_pd(s2 + p), vhq);
    const __m256d num = _mm256_sub_pd(S2, _mm256_mul_pd(S1, _mm256_div_pd(S1, vcm)));
    // max_pd(x, 0) returns its second operand for NaN and for ±0: the same bits as std::max(0.0, x)
    const __m256d var = _mm256_max_pd(_mm256_div_pd(num, vc1), zero);
    const __m256d m = _mm256_div_pd(one, _mm256_add_pd(_mm256_sqrt_pd(var), veps));
    _mm_storeu_ps(o + p, _mm256_cvtpd_ps(m));
  }
  for (; p < n; ++p) {
    const double S1 = s1[p] + hs, S2 = s2[p] + hq;
    const double var = std::max(0.0, (S2 - S1 * (S1 / cm)) / c1);
    o[p] = static_cast<float>(1.0 / (std::sqrt(var) + eps));
  }
}
#endif

void group_std_mult(const double* s1, const double* s2, int64_t n, double hs, double hq, double cm, double c1,
                    double eps, float* o) {
#ifdef R3HF_SCAN_AVX2
  if (cpu::have_avx2()) return group_std_mult_avx2(s1, s2, n, hs, hq, cm, c1, eps, o);
#endif
  for (int64_t p = 0; p < n; ++p) {
    const double S1 = s1[p] + hs, S2 = s2[p] + hq;
    const double var = std::max(0.0, (S2 - S1 * (S1 / cm)) / c1);
    o[p] = static_cast<float>(1.0 / (std::sqrt(var) + eps));
  }
}

// shift/scale [W] of one group for rloo and grpo (scale "group", "none", or "batch" with its
// batch_mult) from the group's tables s1/s2 [W] (s2 read only for grpo with scale "group") and
// h.rows = its rows' (n_i, last_i) sorted by n_i; c = the group's rows.
void affine_group(Held& h, double c, const double* s1, const double* s2, int64_t W, Est est, Scale sc, double eps,
                  double batch_mult, float* o_shift, float* o_mult) {
  h.reset();
  const bool single = c < 2;
  const double rloo_mult = single ? 1.0 : c / (c - 1.0);
  const double cm = std::max(c, 1.0), c1 = std::max(c - 1.0, 1.0);
  // The held sums change only where a row ends: between two row lengths they are constant, so the
  // positions go in segments with branch-free (vectorisable) loops.
  for (int64_t p0 = 0; p0 < W;) {
    h.advance(p0);
    int64_t p1 = W;
    if (h.next < h.rows.size()) p1 = std::min<int64_t>(W, static_cast<int64_t>(h.rows[h.next].first));
    p1 = std::max(p1, p0 + 1);
    const double hs = h.sum, hq = h.sq;
    for (int64_t p = p0; p < p1; ++p) o_shift[p] = single ? 0.f : static_cast<float>((s1[p] + hs) / c);
    if (est == Est::kRloo || sc != Scale::kGroup) {
      const float m = static_cast<float>(est == Est::kRloo ? rloo_mult : sc == Scale::kBatch ? batch_mult : 1.0);
      for (int64_t p = p0; p < p1; ++p) o_mult[p] = m;
    } else if (single) {
      const float m = static_cast<float>(1.0 / (1.0 + eps));
      for (int64_t p = p0; p < p1; ++p) o_mult[p] = m;
    } else {
      group_std_mult(s1 + p0, s2 + p0, p1 - p0, hs, hq, cm, c1, eps, o_mult + p0);
    }
    p0 = p1;
  }
}

void sort_rows(Held& h) {
  std::stable_sort(h.rows.begin(), h.rows.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
}

std::tuple<Tensor, Tensor> group_position_affine_cpu(const Tensor& stats_in, const Tensor& sums_in,
                                                     const Tensor& last_in, const Tensor& ids_in,
                                                     c10::string_view estimator, double eps,
                                                     c10::string_view scale_name) {
  const Est est = parse_position_estimator(estimator);
  const Scale sc = cpu::parse_group_scale(scale_name);
  TORCH_CHECK_VALUE(stats_in.device().is_cpu() && sums_in.device().is_cpu(), "group_position_affine: CPU tensors");
  const Tensor stats = stats_in.to(at::kDouble).contiguous(), sums = sums_in.to(at::kDouble).contiguous();
  const Tensor last = last_in.to(at::kDouble).contiguous(), ids = ids_in.to(at::kLong).contiguous();
  TORCH_CHECK_VALUE(stats.dim() == 2 && stats.size(1) == kStats, "stats must be [R, ", kStats, "], got ",
                    stats.sizes());
  const int64_t R = stats.size(0);
  TORCH_CHECK_VALUE(sums.dim() == 3 && sums.size(0) == 2, "sums must be [2, n_groups, W], got ", sums.sizes());
  TORCH_CHECK_VALUE(last.dim() == 1 && last.numel() == R && ids.dim() == 1 && ids.numel() == R,
                    "last and ids must be [R] = [", R, "], got ", last.sizes(), " and ", ids.sizes());
  const int64_t n_groups = sums.size(1), W = sums.size(2);
  const bool need_sq = est == Est::kReinforcePpBaseline || (est == Est::kGrpo && sc == Scale::kGroup);
  auto f32 = stats.options().dtype(at::kFloat);
  Tensor shift = at::empty({n_groups, W}, f32), mult = at::empty({n_groups, W}, f32);
  if (n_groups == 0 || W == 0) return {shift, mult};

  const double* p_st = stats.data_ptr<double>();
  const double* p_last = last.data_ptr<double>();
  const double* p_s1 = sums.data_ptr<double>();
  const double* p_s2 = p_s1 + n_groups * W;
  const cpu::GroupRows groups(ids.data_ptr<int64_t>(), R, n_groups);
  float* p_shift = shift.data_ptr<float>();
  float* p_mult = mult.data_ptr<float>();

  // scale="batch" for grpo: the unbiased std of the rows' scores (SUM_R), as in row mode.
  double batch_mult = 1.0;
  if (est == Est::kGrpo && sc == Scale::kBatch) {
    double mean = 0.0, m2 = 0.0;
    for (int64_t i = 0; i < R; ++i) mean += p_st[i * kStats + STAT_SUM_R];
    mean = R > 0 ? mean / static_cast<double>(R) : 0.0;
    for (int64_t i = 0; i < R; ++i) {
      const double d = p_st[i * kStats + STAT_SUM_R] - mean;
      m2 += d * d;
    }
    const double sd = R >= 2 ? std::sqrt(m2 / static_cast<double>(R - 1)) : 1.0;
    batch_mult = 1.0 / (sd + eps);
  }

  auto load_group = [&](int64_t g, Held& h) {
    const int64_t* rows = groups.order.data() + groups.offsets[g];
    const int64_t c = groups.offsets[g + 1] - groups.offsets[g];
    h.rows.clear();
    for (int64_t j = 0; j < c; ++j)
      h.rows.emplace_back(p_st[rows[j] * kStats + STAT_COUNT], p_last[rows[j]]);
    sort_rows(h);
    h.reset();
    return static_cast<double>(c);
  };
  // mu (and S1, S2) of group g at p, after h.advance(p).
  auto at = [&](int64_t g, int64_t p, double c, const Held& h) {
    At a;
    a.S1 = p_s1[g * W + p] + h.sum;
    a.S2 = need_sq ? p_s2[g * W + p] + h.sq : 0.0;
    a.mu = c < 2 ? 0.0 : a.S1 / c;
    return a;
  };
  const int64_t grain = std::max<int64_t>(1, 32768 / W);

  if (est != Est::kReinforcePpBaseline) {
    at::parallel_for(0, n_groups, grain, [&](int64_t g0, int64_t g1) {
      Held h;
      for (int64_t g = g0; g < g1; ++g) {
        const double c = load_group(g, h);
        affine_group(h, c, p_s1 + g * W, p_s2 + g * W, W, est, sc, eps, batch_mult, p_shift + g * W, p_mult + g * W);
      }
    });
    return {shift, mult};
  }

  // reinforce_pp_baseline: x = G − mu whitened over every generated token of the batch. Per group
  // (N_g, Σx, Σx²) from the tables (D = the rows still generating at p), then over groups in order.
  std::vector<double> part(3 * n_groups);
  at::parallel_for(0, n_groups, grain, [&](int64_t g0, int64_t g1) {
    Held h;
    for (int64_t g = g0; g < g1; ++g) {
      const double c = load_group(g, h);
      double n = 0.0, sx = 0.0, q = 0.0;
      for (int64_t p = 0; p < W; ++p) {
        h.advance(p);
        const At a = at(g, p, c, h);
        const double D = c - h.count, A = p_s1[g * W + p], Q = p_s2[g * W + p];
        n += D;
        sx += A - D * a.mu;
        q += Q - 2.0 * a.mu * A + D * a.mu * a.mu;
      }
      part[3 * g] = n, part[3 * g + 1] = sx, part[3 * g + 2] = q;
    }
  });
  double N = 0.0, SX = 0.0, Qt = 0.0;
  for (int64_t g = 0; g < n_groups; ++g) N += part[3 * g], SX += part[3 * g + 1], Qt += part[3 * g + 2];
  const double mean = SX / std::max(N, 1.0);
  const double m2 = std::max(0.0, Qt - SX * mean);
  const float inv_std = static_cast<float>(1.0 / std::sqrt(m2 / std::max(N - 1.0, 1.0) + eps));
  at::parallel_for(0, n_groups, grain, [&](int64_t g0, int64_t g1) {
    Held h;
    for (int64_t g = g0; g < g1; ++g) {
      const double c = load_group(g, h);
      for (int64_t p = 0; p < W; ++p) {
        h.advance(p);
        p_shift[g * W + p] = static_cast<float>(at(g, p, c, h).mu + mean);
        p_mult[g * W + p] = inv_std;
      }
    }
  });
  return {shift, mult};
}

// --- steps 1p, 2p and 3p in one pass per group (no `group=`, padded) ----------------------------
// Without `group=` a group's per-position statistics depend on its own rows only. So one task per
// group scans its rows into the thread's scratch G [c, L] (kept in L2: 128 KiB for 8 rows of 4096)
// while adding them to the group's tables [W] (64 KiB), computes the group's shift/scale with
// affine_group and writes A = m·(G − shift[p])·scale[p] from the scratch: rewards and mask are read
// once from memory, the advantages written once, and no [n_groups, W] table is materialised.
// Rows without holes (trailing padding) take group_position_rows.h's fast forms: the scan fused
// with the vertical per-position adds, no read of the padding, and an apply without the mask. Each
// table cell still gets the same adds in the same (row) order as in the three-op path
// (group_position_row_pass, group_position_affine, group_position_finish), and the tables are only
// filled and read up to the group's longest row (no position past it is ever looked up).
//   rloo, grpo (scale "group"/"none"): bitwise the three-op path, for any thread count.
//   grpo, scale "batch": a first pass over the rows computes their scores (SUM_R, masked_sum as in
//     the row pass) and batch_mult as group_position_affine does: also bitwise the three-op path.
//   reinforce_pp_baseline: the per-group moment partials come from the same tables as in
//     group_position_affine but are summed over p in 4 lanes (rpp_partials; the three-op loop is
//     one serial chain), then combined in group order; the output is written as x = G − float(mu)
//     in the group pass and whitened in place, (x − float(mean))·inv_std, where the three-op path
//     computes (G − float(mu + mean))·inv_std: the same to rounding, not bitwise, and still the
//     same bits for any thread count.
struct GroupScratch {
  std::vector<float> G, shift, mult, dummy;
  std::vector<double> sum, sq;
  std::vector<int64_t> len;  // per row of the group: its prefix length, or -1 when it has holes
  Held h;
};

// Scans the c rows rows[0..c) of one group (row order) into s.G [c, L], adds them into s.sum (and
// s.sq when `squares`) and fills s.h with the rows' (n_i, last_i) sorted by n_i. -> the group's
// longest generated count W_g; the tables are valid (zero past the rows) on [0, round_up(W_g, 8)) ∩ [0, W).
int64_t group_tables(const int64_t* rows, int64_t c, const float* p_r, const bool* p_m, int64_t L, int64_t W,
                     float g, bool squares, GroupScratch& s) {
  constexpr int K = cpu::kScanRows;
  s.G.resize(static_cast<size_t>(c * L));
  s.len.resize(static_cast<size_t>(c));
  int64_t wg = 0;
  for (int64_t j = 0; j < c; ++j) {
    const bool* m = p_m + rows[j] * L;
    const int64_t n = cpu::prefix_length(m, L);
    s.len[j] = n;
    wg = std::max(wg, n >= 0 ? n : cpu::generated(m, L));
  }
  const int64_t wz = std::min(W, (wg + 7) / 8 * 8);
  std::fill(s.sum.begin(), s.sum.begin() + wz, 0.0);
  if (squares) std::fill(s.sq.begin(), s.sq.begin() + wz, 0.0);
  double* sq = squares ? s.sq.data() : nullptr;
  s.h.rows.clear();
  for (int64_t j = 0; j < c; j += K) {
    const int64_t n = std::min<int64_t>(K, c - j);
    const float* pr[K];
    const bool* pm[K];
    float* po[K];
    for (int64_t k = 0; k < n; ++k)
      pr[k] = p_r + rows[j + k] * L, pm[k] = p_m + rows[j + k] * L, po[k] = s.G.data() + (j + k) * L;
#ifdef R3HF_SCAN_AVX2
    bool prefix = true;
    for (int64_t k = 0; k < n && prefix; ++k) prefix = s.len[j + k] >= 0;
    // A last block of fewer than K rows (groups of 4, 6, 12, ...) is padded with empty rows
    // (n = 0): their lanes are all masked, hold +0 and add nothing; they read a real row's
    // rewards (masked off) and write into a dummy row.
    int64_t len[K];
    for (int64_t k = 0; k < K; ++k) len[k] = k < n ? s.len[j + k] : 0;
    if (prefix && n < K) {
      s.dummy.resize(static_cast<size_t>(L));
      for (int64_t k = n; k < K; ++k) pr[k] = pr[0], po[k] = s.dummy.data();
    }
    if (prefix && cpu::scan_prefix_rows8_sums(pr, len, L, g, po, s.sum.data(), sq)) {
      for (int64_t k = 0; k < n; ++k)
        s.h.rows.emplace_back(static_cast<double>(len[k]), len[k] > 0 ? static_cast<double>(po[k][len[k] - 1]) : 0.0);
      continue;
    }
#endif
    if (n == K) {
      cpu::scan_rows8(pr, pm, L, g, cpu::SCAN_G, nullptr, nullptr, po);
    } else {
      for (int64_t k = 0; k < n; ++k) reward_to_go_row(pr[k], pm[k], L, g, true, po[k]);
    }
    for (int64_t k = 0; k < n; ++k) {
      int64_t count = 0;
      const double last = cpu::add_positions(po[k], pm[k], L, s.sum.data(), sq, &count);
      s.h.rows.emplace_back(static_cast<double>(count), last);
    }
  }
  sort_rows(s.h);
  return wg;
}

// A = m·(G − shift[p])·mult[p] of the group's rows from the scratch.
void apply_group(const int64_t* rows, int64_t c, const bool* p_m, int64_t L, const GroupScratch& s,
                 float* p_out) {
  for (int64_t j = 0; j < c; ++j) {
    const float* G = s.G.data() + j * L;
    float* o = p_out + rows[j] * L;
    if (s.len[j] >= 0) {
      cpu::position_apply_prefix(G, s.len[j], L, s.shift.data(), s.mult.data(), o);
    } else {
      cpu::position_apply(G, p_m + rows[j] * L, L, s.shift.data(), s.mult.data(), o);
    }
  }
}

// grpo's scale="batch": 1/(std + eps) of the rows' scores Σ m·r (unbiased, 1 for < 2 rows), the
// scores summed by the row pass's masked_sum and reduced in row order as group_position_affine does.
double score_batch_mult(const float* p_r, const bool* p_m, int64_t B, int64_t L, double eps) {
  std::vector<double> score(static_cast<size_t>(B));
  at::parallel_for(0, B, cpu::grain(L), [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0; i < b1; ++i) {
      double n = 0.0;
      cpu::masked_sum(p_r + i * L, p_m + i * L, L, n, score[i]);
    }
  });
  double mean = 0.0, m2 = 0.0;
  for (int64_t i = 0; i < B; ++i) mean += score[i];
  mean = B > 0 ? mean / static_cast<double>(B) : 0.0;
  for (int64_t i = 0; i < B; ++i) {
    const double d = score[i] - mean;
    m2 += d * d;
  }
  const double sd = B >= 2 ? std::sqrt(m2 / static_cast<double>(B - 1)) : 1.0;
  return 1.0 / (sd + eps);
}

// reinforce_pp_baseline's moments of one group, (N_g, Σx, Σx²) of x = G − mu over its generated
// tokens, from its tables s1/s2 [wz] (0 past the rows) and h.rows sorted by n_i: D = the rows still
// generating at p, the sums over p in 4 lanes (lane p mod 4, each lane in increasing p, combined in
// lane order), so the bits are the same with or without AVX2 and for any thread count. (Positions
// past the tables add exact zeros: no row is generating there.)
#ifdef R3HF_SCAN_AVX2
R3HF_AVX2 void rpp_lanes_avx2(const double* s1, const double* s2, int64_t p0, int64_t p1, double D, double hs,
                              double c, bool single, double* acc) {
  __m256d n = _mm256_loadu_pd(acc), sx = _mm256_loadu_pd(acc + 4), q = _mm256_loadu_pd(acc + 8);
  const __m256d vD = _mm256_set1_pd(D), vhs = _mm256_set1_pd(hs), vc = _mm256_set1_pd(c), two = _mm256_set1_pd(2.0);
  for (int64_t p = p0; p < p1; p += 4) {
    const __m256d A = _mm256_loadu_pd(s1 + p), Q = _mm256_loadu_pd(s2 + p);
    const __m256d mu = single ? _mm256_setzero_pd() : _mm256_div_pd(_mm256_add_pd(A, vhs), vc);
    n = _mm256_add_pd(n, vD);
    sx = _mm256_add_pd(sx, _mm256_sub_pd(A, _mm256_mul_pd(vD, mu)));
    const __m256d t = _mm256_sub_pd(Q, _mm256_mul_pd(_mm256_mul_pd(two, mu), A));
    q = _mm256_add_pd(q, _mm256_add_pd(t, _mm256_mul_pd(_mm256_mul_pd(vD, mu), mu)));
  }
  _mm256_storeu_pd(acc, n), _mm256_storeu_pd(acc + 4, sx), _mm256_storeu_pd(acc + 8, q);
}
#endif

void rpp_partials(Held& h, double c, const double* s1, const double* s2, int64_t wz, double* part) {
  double acc[12] = {0.0};  // n, Σx, Σx² in 4 lanes each
  const bool single = c < 2;
  auto one = [&](int64_t p, double D, double hs) {
    const double A = s1[p], Q = s2[p];
    const double mu = single ? 0.0 : (A + hs) / c;
    const int l = static_cast<int>(p & 3);
    acc[l] += D;
    acc[4 + l] += A - D * mu;
    acc[8 + l] += Q - 2.0 * mu * A + D * mu * mu;
  };
  h.reset();
  for (int64_t p0 = 0; p0 < wz;) {
    h.advance(p0);
    int64_t p1 = wz;
    if (h.next < h.rows.size()) p1 = std::min<int64_t>(wz, static_cast<int64_t>(h.rows[h.next].first));
    p1 = std::max(p1, p0 + 1);
    const double hs = h.sum, D = c - h.count;
    int64_t p = p0;
#ifdef R3HF_SCAN_AVX2
    if (cpu::have_avx2()) {
      const int64_t a = std::min(p1, (p0 + 3) / 4 * 4), b = std::max(a, p1 - p1 % 4);
      for (; p < a; ++p) one(p, D, hs);
      rpp_lanes_avx2(s1, s2, a, b, D, hs, c, single, acc);
      p = b;
    }
#endif
    for (; p < p1; ++p) one(p, D, hs);
    p0 = p1;
  }
  for (int k = 0; k < 3; ++k) part[k] = ((acc[4 * k] + acc[4 * k + 1]) + acc[4 * k + 2]) + acc[4 * k + 3];
}

Tensor group_position_advantages_cpu(const Tensor& rewards_in, const Tensor& mask_in, const Tensor& ids_in,
                                     int64_t n_groups, int64_t width, double gamma, c10::string_view estimator,
                                     double eps, c10::string_view scale_name) {
  const Est est = parse_position_estimator(estimator);
  const Scale sc = cpu::parse_group_scale(scale_name);
  TORCH_CHECK_VALUE(rewards_in.device().is_cpu(), "rewards must be a CPU tensor");
  TORCH_CHECK_VALUE(rewards_in.dim() == 2 && rewards_in.sizes() == mask_in.sizes(),
                    "rewards and response_mask must both be [B, L], got ", rewards_in.sizes(), " and ",
                    mask_in.sizes());
  const Tensor r = f32(rewards_in), mask = as_bool(mask_in), ids = ids_in.to(at::kLong).contiguous();
  const int64_t B = r.size(0), L = r.size(1), W = width;
  TORCH_CHECK_VALUE(n_groups >= 0 && W >= L, "n_groups must be >= 0 and width >= L = ", L, ", got ", n_groups, " and ",
                    W);
  TORCH_CHECK_VALUE(ids.dim() == 1 && ids.numel() == B, "ids must be [", B, "], got ", ids.sizes());
  Tensor out = at::empty({B, L}, r.options());
  if (B == 0) return out;
  const cpu::GroupRows groups(ids.data_ptr<int64_t>(), B, n_groups);  // checks 0 <= ids < n_groups
  const float* p_r = r.data_ptr<float>();
  const bool* p_m = mask.data_ptr<bool>();
  float* p_out = out.data_ptr<float>();
  const float g = static_cast<float>(gamma);
  const bool rpp = est == Est::kReinforcePpBaseline;
  const bool squares = rpp || (est == Est::kGrpo && sc == Scale::kGroup);
  const double batch_mult = est == Est::kGrpo && sc == Scale::kBatch ? score_batch_mult(p_r, p_m, B, L, eps) : 1.0;
  std::vector<double> part(rpp ? 3 * n_groups : 0, 0.0);  // reinforce_pp_baseline: (N_g, Σx, Σx²) per group
  at::parallel_for(0, n_groups, 1, [&](int64_t g0, int64_t g1) {
    thread_local GroupScratch s;
    s.sum.resize(W), s.sq.resize(W), s.shift.resize(W), s.mult.resize(W);
    for (int64_t grp = g0; grp < g1; ++grp) {
      const int64_t* rows = groups.order.data() + groups.offsets[grp];
      const int64_t c = groups.offsets[grp + 1] - groups.offsets[grp];
      if (c == 0) continue;
      const int64_t wg = group_tables(rows, c, p_r, p_m, L, W, g, squares, s);
      const double cd = static_cast<double>(c);
      if (!rpp) {
        affine_group(s.h, cd, s.sum.data(), s.sq.data(), wg, est, sc, eps, batch_mult, s.shift.data(), s.mult.data());
        apply_group(rows, c, p_m, L, s, p_out);
        continue;
      }
      // reinforce_pp_baseline: shift = float(mu), mult = 1 (grpo without a scale), x = G − mu
      affine_group(s.h, cd, s.sum.data(), s.sq.data(), wg, Est::kGrpo, Scale::kNone, eps, 1.0, s.shift.data(),
                   s.mult.data());
      apply_group(rows, c, p_m, L, s, p_out);
      rpp_partials(s.h, cd, s.sum.data(), s.sq.data(), std::min(W, (wg + 7) / 8 * 8), part.data() + 3 * grp);
    }
    cpu::stream_fence();
  });
  if (!rpp) return out;
  // group_position_affine's batch moments, combined in group order: the same bits.
  double N = 0.0, SX = 0.0, Qt = 0.0;
  for (int64_t grp = 0; grp < n_groups; ++grp) N += part[3 * grp], SX += part[3 * grp + 1], Qt += part[3 * grp + 2];
  const double mean = SX / std::max(N, 1.0);
  const double m2 = std::max(0.0, Qt - SX * mean);
  const float inv_std = static_cast<float>(1.0 / std::sqrt(m2 / std::max(N - 1.0, 1.0) + eps));
  const float mean_f = static_cast<float>(mean);
  at::parallel_for(0, B, cpu::grain(L), [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0; i < b1; ++i) cpu::shift_scale_masked(p_out + i * L, p_m + i * L, L, mean_f, inv_std);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(r3hf, CPU, m) {
  m.impl("group_position_affine", &group_position_affine_cpu);
  m.impl("group_position_advantages", &group_position_advantages_cpu);
}

}  // namespace r3hf
