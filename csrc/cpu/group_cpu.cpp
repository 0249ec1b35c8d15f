// CPU implementations of the group-advantage ops (issue 12; schemas in csrc/library.cpp):
// reward_to_go, and the two backend passes of group_advantages / fused_reward_group_advantages
// around the Python group statistics (r3hf/_group_stats.py, whose docstring is the contract):
//
//   group_row_pass              rewards [B, L] -> stats [B, 5] f64
//   fused_reward_group_row_pass hidden [B, S, D] -> (rewards [B, L] f32, stats), no [B, S] scores
//   group_finish                rewards, (shift_i, scale_i) -> advantages [B, L] f32
// (and step 2 without `group=`, group_row_affine: stats, index -> (shift_i, scale_i); group_row_affine.cpp)
//
// The reward-to-go G is recomputed by the finish pass instead of being written by the row pass
// and read back (the contract's `returns`): the same fp32 operations give the same bits, and a
// [B, L] fp32 tensor is neither allocated, written nor read again.
//
// A reverse scan is a chain of dependent adds, so one row at a time is latency-bound. Rows are
// therefore scanned kRows at a time, interleaved; every row still goes through exactly the same
// operations in the same order whatever its neighbours, block or thread, so results are bitwise
// identical for any thread count (and equal to a one-row scan).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "../group_math.h"
#include "../op_args.h"
#include "../r3hf_math.h"
#include "cpu_common.h"
#include "group_rows.h"

namespace r3hf {
namespace {

using at::Tensor;
using cpu::as_long;
using cpu::check_cpu;
using cpu::check_prompt_len;
using cpu::grain;
using cpu::Projection;
using cpu::finish_block;
using cpu::row_pass_block;
using cpu::RowPassColumns;
using cpu::rtg_block;

// Rows scanned together: one vector of cpu::kScanRows rows, scanned tile by tile (group_rows.h,
// scan_rows8), so no L1 set is thrashed by rows L apart (interleaving 8 rows position by position
// ran 12x slower than 4 at L = 4096).
constexpr int kRows = cpu::kScanRows;

// Rows [0, B) in blocks of kRows (the last block shorter), spread over threads.
template <typename Block>
void for_row_blocks(int64_t B, int64_t L, Block block) {
  const int64_t n_blocks = (B + kRows - 1) / kRows;
  at::parallel_for(0, n_blocks, grain(L * kRows), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b0 = i * kRows;
      const int64_t n = std::min<int64_t>(kRows, B - b0);
      if (n == kRows) {
        block(std::integral_constant<int, kRows>{}, b0);
      } else {
        for (int64_t b = b0; b < b0 + n; ++b) block(std::integral_constant<int, 1>{}, b);
      }
    }
  });
}

void check_rows(const Tensor& x, const Tensor& mask, const char* name) {
  TORCH_CHECK_VALUE(x.dim() == 2 && x.sizes() == mask.sizes(), name, " and response_mask must both be [B, L], got ",
                    x.sizes(), " and ", mask.sizes());
}

// --- reward_to_go -------------------------------------------------------------------------------

// rtg_block: csrc/cpu/group_rows.h.

Tensor reward_to_go_cpu(const Tensor& rewards_in, const Tensor& mask_in, double gamma, c10::string_view holes) {
  check_cpu(rewards_in, "rewards");
  check_rows(rewards_in, mask_in, "rewards");
  const bool skip = parse_holes(holes) == HOLES_SKIP;
  const Tensor r = f32(rewards_in), mask = as_bool(mask_in);
  const int64_t B = r.size(0), L = r.size(1);
  Tensor out = at::empty({B, L}, r.options());
  const float* p_r = r.data_ptr<float>();
  const bool* p_m = mask.data_ptr<bool>();
  float* p_out = out.data_ptr<float>();
  const float g = static_cast<float>(gamma);
  for_row_blocks(B, L, [&](auto K, int64_t b) {
    rtg_block<decltype(K)::value>(p_r + b * L, p_m + b * L, L, g, skip, p_out + b * L);
  });
  return out;
}

// --- row pass -----------------------------------------------------------------------------------

// The row moments (masked_sum, masked_sum_sq, scan_moments8), RowPassColumns and row_pass_block:
// csrc/cpu/group_rows.h.

Tensor group_row_pass_cpu(const Tensor& rewards_in, const Tensor& mask_in, double gamma, bool returns_stats,
                          bool reward_m2) {
  check_cpu(rewards_in, "rewards");
  check_rows(rewards_in, mask_in, "rewards");
  const Tensor r = f32(rewards_in), mask = as_bool(mask_in);
  const int64_t B = r.size(0), L = r.size(1);
  Tensor stats = at::empty({B, kStats}, r.options().dtype(at::kDouble));
  const float* p_r = r.data_ptr<float>();
  const bool* p_m = mask.data_ptr<bool>();
  double* p_s = stats.data_ptr<double>();
  const float g = static_cast<float>(gamma);
  RowPassColumns cols;
  cols.returns_stats = returns_stats;
  cols.reward_m2 = reward_m2;
  for_row_blocks(B, L, [&](auto K, int64_t b) {
    row_pass_block<decltype(K)::value>(p_r + b * L, p_m + b * L, L, g, cols, nullptr, p_s + b * kStats);
  });
  return stats;
}

// --- fused row pass -----------------------------------------------------------------------------

// Per row: project only the hidden states its rewards read (as fused_reward_gae does), form the
// token rewards, then the row pass on them. Nothing of size [B, S] is materialised.
std::tuple<Tensor, Tensor> fused_reward_group_row_pass_cpu(
    const Tensor& hidden, const Tensor& weight, const c10::optional<Tensor>& bias, const Tensor& mask_in,
    const Tensor& prompt_len_in, const c10::optional<Tensor>& logprobs_in, const c10::optional<Tensor>& ref_in,
    double kl_coef, c10::string_view kl_estimator, OptRange kl_clamp, c10::string_view first, double beta_c,
    OptRange reward_clip, double gamma, const c10::optional<Tensor>& potential_weight,
    const c10::optional<Tensor>& potential_bias) {
  check_cpu(hidden, "hidden");
  Projection proj(hidden, weight, bias);
  const cpu::Heads heads(proj, potential_weight, potential_bias);
  const RewardOptions ropt = reward_options(first, beta_c, kl_coef, kl_estimator, kl_clamp, reward_clip);
  const Tensor mask = as_bool(mask_in), prompt_len = as_long(prompt_len_in);
  TORCH_CHECK_VALUE(mask.dim() == 2, "response_mask must be [B, L], got ", mask.sizes());
  const int64_t B = hidden.size(0), S = hidden.size(1), L = mask.size(1);
  TORCH_CHECK_VALUE(mask.size(0) == B && prompt_len.numel() == B,
                    "response_mask must be [B, L] and prompt_len [B] with B = ", B);
  Tensor lp, ref;
  if (ropt.use_kl) {
    TORCH_CHECK_VALUE(logprobs_in.has_value() && ref_in.has_value(), "kl_coef != 0 needs logprobs and ref_logprobs");
    lp = f32(*logprobs_in);
    ref = f32(*ref_in);
    TORCH_CHECK_VALUE(lp.sizes() == mask.sizes() && ref.sizes() == mask.sizes(), "logprobs must be [B, L]");
  }
  const int64_t* p_len = prompt_len.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) check_prompt_len(p_len[b], L, S, ropt.first_prompt);
  auto opts = hidden.options().dtype(at::kFloat);
  Tensor rewards = at::empty({B, L}, opts);
  Tensor stats = at::empty({B, kStats}, opts.dtype(at::kDouble));
  const bool* p_m = mask.data_ptr<bool>();
  const float* p_lp = ropt.use_kl ? lp.data_ptr<float>() : nullptr;
  const float* p_ref = ropt.use_kl ? ref.data_ptr<float>() : nullptr;
  float* p_rw = rewards.data_ptr<float>();
  double* p_s = stats.data_ptr<double>();
  const float g = static_cast<float>(gamma);
  R3HF_DISPATCH_HIDDEN(proj.hidden.scalar_type(), "r3hf::fused_reward_group_row_pass", [&] {
    const scalar_t* base = proj.hidden.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> s(L + 1);
      std::vector<char> need(L + 1);
      for (int64_t b = begin; b < end; ++b) {
        const bool* m = p_m + b * L;
        needed_scores(m, L, ropt.first_prompt, reinterpret_cast<bool*>(need.data()));
        heads.fill(base, b, p_len[b] - 1, m, reinterpret_cast<const bool*>(need.data()), L, s.data());
        float* rw = p_rw + b * L;
        token_rewards_row(s.data(), m, p_lp ? p_lp + b * L : nullptr, p_ref ? p_ref + b * L : nullptr, L, ropt, rw);
        row_pass_block<1>(rw, m, L, g, RowPassColumns{}, nullptr, p_s + b * kStats);
      }
    });
  });
  return {rewards, stats};
}

// --- finish pass --------------------------------------------------------------------------------

// finish_block: csrc/cpu/group_rows.h.

Tensor group_finish_cpu(const Tensor& rewards_in, const Tensor& mask_in, const Tensor& shift_in,
                        const Tensor& scale_in, double gamma, bool on_rewards) {
  check_cpu(rewards_in, "rewards");
  check_rows(rewards_in, mask_in, "rewards");
  const Tensor r = f32(rewards_in), mask = as_bool(mask_in), shift = f32(shift_in), scale = f32(scale_in);
  const int64_t B = r.size(0), L = r.size(1);
  TORCH_CHECK_VALUE(shift.numel() == B && scale.numel() == B, "shift and scale must be [B] = [", B, "], got ",
                    shift.sizes(), " and ", scale.sizes());
  Tensor out = at::empty({B, L}, r.options());
  const float* p_r = r.data_ptr<float>();
  const bool* p_m = mask.data_ptr<bool>();
  const float* p_shift = shift.data_ptr<float>();
  const float* p_scale = scale.data_ptr<float>();
  float* p_out = out.data_ptr<float>();
  const float g = static_cast<float>(gamma);
  for_row_blocks(B, L, [&](auto K, int64_t b) {
    finish_block<decltype(K)::value>(p_r + b * L, p_m + b * L, L, p_shift + b, p_scale + b, g, on_rewards,
                                     p_out + b * L);
  });
  return out;
}

// --- per-position baselines (issue 21; r3hf/_group_stats.py steps 1p and 3p) -------------------

// K rows given by pointers (a group's rows need not be adjacent), scanned backwards together into
// G [K, L]: each row with rtg_block's operations, so the same bits as a one-row scan.
template <int K>
void scan_rows(const float* const* r, const bool* const* m, int64_t L, float gamma, float* G) {
  float running[K];
  for (int k = 0; k < K; ++k) running[k] = 0.f;
  for (int64_t t = L - 1; t >= 0; --t)
    for (int k = 0; k < K; ++k) G[k * L + t] = rtg_step(r[k][t], m[k][t], gamma, true, running[k]);
}

void check_ids(const Tensor& ids, int64_t rows, int64_t n_groups, const char* what) {
  TORCH_CHECK_VALUE(ids.dim() == 1 && ids.numel() == rows, "ids must be [", rows, "] (one per ", what, "), got ",
                    ids.sizes());
  const int64_t* p = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < rows; ++i)
    TORCH_CHECK_VALUE(p[i] >= 0 && p[i] < n_groups, "ids must be dense ids in [0, n_groups = ", n_groups, "), got ",
                      p[i]);
}

// -> (stats [B, 5] f64 with COUNT and SUM_R (the others NaN), sums [2, n_groups, width] f64, last [B]
// f64). One group per task, its rows kRows at a time in row order (cpu::GroupRows): each table cell
// is summed in a fixed order, so the bits do not depend on the thread count.
std::tuple<Tensor, Tensor, Tensor> group_position_row_pass_cpu(const Tensor& rewards_in, const Tensor& mask_in,
                                                               const Tensor& ids_in, int64_t n_groups, int64_t width,
                                                               double gamma, bool squares) {
  check_cpu(rewards_in, "rewards");
  check_rows(rewards_in, mask_in, "rewards");
  const Tensor r = f32(rewards_in), mask = as_bool(mask_in), ids = as_long(ids_in).contiguous();
  const int64_t B = r.size(0), L = r.size(1);
  TORCH_CHECK_VALUE(n_groups >= 0 && width >= L, "n_groups must be >= 0 and width >= L = ", L, ", got ", n_groups,
                    " and ", width);
  check_ids(ids, B, n_groups, "row");
  auto f64 = r.options().dtype(at::kDouble);
  Tensor stats = at::empty({B, kStats}, f64), sums = at::zeros({2, n_groups, width}, f64), last = at::empty({B}, f64);
  const float* p_r = r.data_ptr<float>();
  const bool* p_m = mask.data_ptr<bool>();
  double *p_s = stats.data_ptr<double>(), *p_sums = sums.data_ptr<double>(), *p_last = last.data_ptr<double>();
  const float g = static_cast<float>(gamma);
  const cpu::GroupRows groups(ids.data_ptr<int64_t>(), B, n_groups);
  RowPassColumns cols;
  cols.returns_stats = false;  // the tables replace SUM_G/M2_G in this mode
  cols.reward_m2 = false;
  const int64_t per_group = std::max<int64_t>(1, B / std::max<int64_t>(1, n_groups));
  at::parallel_for(0, n_groups, grain(L * per_group), [&](int64_t g0, int64_t g1) {
    thread_local std::vector<float> G;
    G.resize(static_cast<size_t>(kRows * L));
    for (int64_t grp = g0; grp < g1; ++grp) {
      const int64_t* rows = groups.order.data() + groups.offsets[grp];
      const int64_t c = groups.offsets[grp + 1] - groups.offsets[grp];
      double* sum = p_sums + grp * width;
      double* sq = squares ? p_sums + (n_groups + grp) * width : nullptr;
      for (int64_t j = 0; j < c; j += kRows) {
        const int64_t n = std::min<int64_t>(kRows, c - j);
        const float* pr[kRows];
        const bool* pm[kRows];
        for (int64_t k = 0; k < n; ++k) pr[k] = p_r + rows[j + k] * L, pm[k] = p_m + rows[j + k] * L;
        if (n == kRows) {
          float* po[kRows];
          for (int k = 0; k < kRows; ++k) po[k] = G.data() + k * L;
          cpu::scan_rows8(pr, pm, L, g, cpu::SCAN_G, nullptr, nullptr, po);
        } else {
          for (int64_t k = 0; k < n; ++k) scan_rows<1>(pr + k, pm + k, L, g, G.data() + k * L);
        }
        for (int64_t k = 0; k < n; ++k) {
          const int64_t i = rows[j + k];
          cpu::row_stats(pr[k], pm[k], L, nullptr, cols, p_s + i * kStats);
          p_last[i] = cpu::add_positions(G.data() + k * L, pm[k], L, sum, sq);
        }
      }
    }
  });
  return {stats, sums, last};
}

// A = m·(G − shift[id, p])·scale[id, p], shift/scale f32 [n_groups, W] (W >= L), p the position.
Tensor group_position_finish_cpu(const Tensor& rewards_in, const Tensor& mask_in, const Tensor& ids_in,
                                 const Tensor& shift_in, const Tensor& scale_in, double gamma) {
  check_cpu(rewards_in, "rewards");
  check_rows(rewards_in, mask_in, "rewards");
  const Tensor r = f32(rewards_in), mask = as_bool(mask_in), ids = as_long(ids_in).contiguous();
  const Tensor shift = f32(shift_in).contiguous(), scale = f32(scale_in).contiguous();
  const int64_t B = r.size(0), L = r.size(1);
  TORCH_CHECK_VALUE(shift.dim() == 2 && scale.sizes() == shift.sizes() && shift.size(1) >= L,
                    "shift and scale must both be [n_groups, W] with W >= L = ", L, ", got ", shift.sizes(), " and ",
                    scale.sizes());
  const int64_t W = shift.size(1);
  check_ids(ids, B, shift.size(0), "row");
  Tensor out = at::empty({B, L}, r.options());
  const float* p_r = r.data_ptr<float>();
  const bool* p_m = mask.data_ptr<bool>();
  const int64_t* p_ids = ids.data_ptr<int64_t>();
  const float *p_shift = shift.data_ptr<float>(), *p_scale = scale.data_ptr<float>();
  float* p_out = out.data_ptr<float>();
  const float g = static_cast<float>(gamma);
  // G recomputed by the row pass's scan (the same bits) into the thread's scratch, then applied
  // forward row by row (position_apply: whole runs of generated tokens read the tables as vectors).
  for_row_blocks(B, L, [&](auto K_, int64_t b) {
    constexpr int K = decltype(K_)::value;
    thread_local std::vector<float> G;
    G.resize(static_cast<size_t>(kRows * L));
    rtg_block<K>(p_r + b * L, p_m + b * L, L, g, true, G.data());
    for (int k = 0; k < K; ++k) {
      const int64_t id = p_ids[b + k];
      cpu::position_apply(G.data() + k * L, p_m + (b + k) * L, L, p_shift + id * W, p_scale + id * W,
                          p_out + (b + k) * L);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(r3hf, CPU, m) {
  m.impl("reward_to_go", &reward_to_go_cpu);
  m.impl("group_row_pass", &group_row_pass_cpu);
  m.impl("fused_reward_group_row_pass", &fused_reward_group_row_pass_cpu);
  m.impl("group_finish", &group_finish_cpu);
  m.impl("group_position_row_pass", &group_position_row_pass_cpu);
  m.impl("group_position_finish", &group_position_finish_cpu);
}

}  // namespace r3hf
