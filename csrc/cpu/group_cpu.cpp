// CPU implementations of the group-advantage ops (issue 12; schemas in csrc/library.cpp):
// reward_to_go, and the two backend passes of group_advantages / fused_reward_group_advantages
// around the Python group statistics (r3hf/_group_stats.py, whose docstring is the contract):
//
//   group_row_pass              rewards [B, L] -> stats [B, 5] f64
//   fused_reward_group_row_pass hidden [B, S, D] -> (rewards [B, L] f32, stats), no [B, S] scores
//   group_finish                rewards, (shift_i, scale_i) -> advantages [B, L] f32
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

#include <limits>
#include <vector>

#include "../group_math.h"
#include "../op_args.h"
#include "../r3hf_math.h"
#include "cpu_common.h"

namespace r3hf {
namespace {

using at::Tensor;
using cpu::as_long;
using cpu::check_cpu;
using cpu::check_prompt_len;
using cpu::grain;
using cpu::Projection;

// Rows scanned together. Four independent chains hide the add latency; more rows at a
// power-of-two L put every row's current position in the same L1 set and thrash it (measured:
// 8 rows of L = 4096 ran 12x slower than 4).
constexpr int kRows = 4;

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

// Row moments in double over kLanes fixed lanes: vectorised over t, and the lane sums are added
// in a fixed order, so the bits do not depend on threads.
constexpr int kLanes = 8;

inline double lane_total(const double* acc) {
  double total = 0.0;
  for (int l = 0; l < kLanes; ++l) total += acc[l];
  return total;
}

// (Σ m, Σ m·x) of one row. (R3HF_CLONES, from dot.h: also compiled for AVX2, picked at load time.)
R3HF_CLONES void masked_sum(const float* x, const bool* m, int64_t L, double& count, double& sum) {
  double acc_n[kLanes] = {0.0}, acc_s[kLanes] = {0.0};
  int64_t t = 0;
  for (; t + kLanes <= L; t += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
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
R3HF_CLONES double masked_m2(const float* x, const bool* m, int64_t L, double mean) {
  double acc[kLanes] = {0.0};
  int64_t t = 0;
  for (; t + kLanes <= L; t += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
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
template <int K>
void row_pass_block(const float* r, const bool* m, int64_t L, float gamma, RowPassColumns cols, float* G,
                    double* stats) {
  if (cols.returns_stats) rtg_block<K>(r, m, L, gamma, true, G);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (int k = 0; k < K; ++k) {
    const float* x = r + k * L;
    const bool* mk = m + k * L;
    double* s = stats + k * kStats;
    double n, sum;
    masked_sum(x, mk, L, n, sum);
    s[STAT_COUNT] = n;
    s[STAT_SUM_R] = sum;
    s[STAT_M2_R] = cols.reward_m2 ? masked_m2(x, mk, L, n > 0 ? sum / n : 0.0) : nan;
    if (cols.returns_stats) {
      double n_g, sum_g;
      masked_sum(G + k * L, mk, L, n_g, sum_g);
      s[STAT_SUM_G] = sum_g;
      s[STAT_M2_G] = masked_m2(G + k * L, mk, L, n > 0 ? sum_g / n : 0.0);
    } else {
      s[STAT_SUM_G] = nan;
      s[STAT_M2_G] = nan;
    }
  }
}

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
    thread_local std::vector<float> scratch;
    if (cols.returns_stats) scratch.resize(static_cast<size_t>(kRows * L));
    row_pass_block<decltype(K)::value>(p_r + b * L, p_m + b * L, L, g, cols, scratch.data(), p_s + b * kStats);
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
    OptRange reward_clip, double gamma) {
  check_cpu(hidden, "hidden");
  Projection proj(hidden, weight, bias);
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
      std::vector<float> s(L + 1), G(L);
      std::vector<char> need(L + 1);
      for (int64_t b = begin; b < end; ++b) {
        const bool* m = p_m + b * L;
        needed_scores(m, L, ropt.first_prompt, reinterpret_cast<bool*>(need.data()));
        for (int64_t k = 0; k <= L; ++k) s[k] = need[k] ? proj.score(base, b, p_len[b] - 1 + k) : 0.f;
        float* rw = p_rw + b * L;
        token_rewards_row(s.data(), m, p_lp ? p_lp + b * L : nullptr, p_ref ? p_ref + b * L : nullptr, L, ropt, rw);
        row_pass_block<1>(rw, m, L, g, RowPassColumns{}, G.data(), p_s + b * kStats);
      }
    });
  });
  return {rewards, stats};
}

// --- finish pass --------------------------------------------------------------------------------

// K rows of advantages, one reverse scan (holes="skip"):
//   on_rewards false: G = reward_to_go(r) recomputed (the row pass's bits), A = m·(G − shift)·scale;
//   on_rewards true:  A = reward_to_go(m·(r − shift)·scale).
template <int K>
void finish_block(const float* r, const bool* m, int64_t L, const float* shift, const float* scale, float gamma,
                  bool on_rewards, float* out) {
  float running[K], sh[K], sc[K];
  for (int k = 0; k < K; ++k) running[k] = 0.f, sh[k] = shift[k], sc[k] = scale[k];
  if (on_rewards) {
    for (int64_t t = L - 1; t >= 0; --t) {
      for (int k = 0; k < K; ++k) {
        const int64_t i = k * L + t;
        const bool mk = m[i];
        const float x = mk ? (r[i] - sh[k]) * sc[k] : 0.f;
        out[i] = rtg_step(x, mk, gamma, true, running[k]);
      }
    }
    return;
  }
  for (int64_t t = L - 1; t >= 0; --t) {
    for (int k = 0; k < K; ++k) {
      const int64_t i = k * L + t;
      const bool mk = m[i];
      const float g = rtg_step(mk ? r[i] : 0.f, mk, gamma, true, running[k]);
      out[i] = mk ? (g - sh[k]) * sc[k] : 0.f;
    }
  }
}

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

}  // namespace

TORCH_LIBRARY_IMPL(r3hf, CPU, m) {
  m.impl("reward_to_go", &reward_to_go_cpu);
  m.impl("group_row_pass", &group_row_pass_cpu);
  m.impl("fused_reward_group_row_pass", &fused_reward_group_row_pass_cpu);
  m.impl("group_finish", &group_finish_cpu);
}

}  // namespace r3hf
