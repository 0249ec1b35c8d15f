// CPU kernels of the packed group-advantage ops (cu_seqlens; schemas in csrc/library.cpp): the
// reward-to-go, and the row pass / fused row pass / finish around r3hf/_group_stats.affine, where a
// sequence is a row (stats [N, 5], shift and scale [N]). See csrc/cpu/group_cpu.cpp for the padded
// kernels and csrc/cpu/packed_common.h for the layout.
//
// Each sequence is computed by one thread with the padded kernels' per-position operations
// (group_math.h, group_rows.h) in the same order, so the bits are the padded kernels' for any
// thread count:
// - the scans (reward-to-go, finish) run over the whole sequence [c0, c1): its prompt positions
//   are masked and come last in the backward scan, so they change nothing and get 0;
// - the row statistics run over the response region [s_i, c1), i.e. the padded row itself, so the
//   moments' fixed lanes see the same positions as in the padded kernel.
// A reverse scan is a chain of dependent adds, latency-bound one sequence at a time; as the padded
// kernels interleave kRows rows, these interleave kSeqs sequences of similar length (sequences
// sorted by scan length, ends aligned). Which sequences share a block changes no bit of any.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../group_math.h"
#include "../op_args.h"
#include "../r3hf_math.h"
#include "cpu_common.h"
#include "group_rows.h"
#include "packed_common.h"

namespace r3hf {
namespace {

using at::Tensor;
using cpu::check_cpu;
using cpu::check_first_prompt;
using cpu::check_stream;
using cpu::finish_step;
using cpu::first_generated;
using cpu::packed_hidden;
using cpu::packed_offsets;
using cpu::parallel_seqs;
using cpu::Projection;
using cpu::row_pass_block;
using cpu::RowPassColumns;
using cpu::row_stats;
using cpu::seq_grain;

constexpr int kSeqs = 4;

// The segments [beg[k], end[k]) of K sequences, scanned backwards with their ends aligned: the
// positions end[k] − 1 − j of all K together while j is below the shortest length, then the rest
// of each alone. step(k, i) sees each segment's positions in backward order, as a one-sequence scan.
template <int K, typename Step>
inline void scan_segments(const int64_t* beg, const int64_t* end, Step&& step) {
  int64_t n = end[0] - beg[0];
  for (int k = 1; k < K; ++k) n = std::min(n, end[k] - beg[k]);
  for (int64_t j = 0; j < n; ++j)
    for (int k = 0; k < K; ++k) step(k, end[k] - 1 - j);
  for (int k = 0; k < K; ++k)
    for (int64_t i = end[k] - 1 - n; i >= beg[k]; --i) step(k, i);
}

// The segments [beg[i], end[i]) of N sequences in blocks of kSeqs of similar length (sorted by
// length, ties by index: a fixed order), spread over threads. block(K, seqs) gets the sequence ids.
// Blocks are handed out longest first as threads free up: equal-count ranges of a length-sorted
// list would give one thread all the long sequences; tasks of 1/8 of the usual grain let the
// dynamic hand-out even out the rest.
template <typename Block>
void for_seq_blocks(const std::vector<int64_t>& beg, const std::vector<int64_t>& end, int64_t T, Block&& block) {
  const int64_t N = static_cast<int64_t>(beg.size());
  std::vector<int64_t> order(N);
  for (int64_t i = 0; i < N; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    const int64_t la = end[a] - beg[a], lb = end[b] - beg[b];
    return la != lb ? la < lb : a < b;
  });
  const int64_t n_blocks = (N + kSeqs - 1) / kSeqs;
  parallel_seqs(n_blocks, std::max<int64_t>(1, seq_grain(T, N, kSeqs) / 8), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = n_blocks - 1 - r;
      const int64_t* ids = order.data() + b * kSeqs;
      const int64_t n = std::min<int64_t>(kSeqs, N - b * kSeqs);
      if (n == kSeqs) {
        block(std::integral_constant<int, kSeqs>{}, ids);
      } else {
        for (int64_t k = 0; k < n; ++k) block(std::integral_constant<int, 1>{}, ids + k);
      }
    }
  });
}

// (beg, end) per sequence: the whole sequence [cu[i], cu[i+1]).
void sequence_segments(const int64_t* cu, int64_t N, std::vector<int64_t>& beg, std::vector<int64_t>& end) {
  beg.assign(cu, cu + N);
  end.assign(cu + 1, cu + N + 1);
}

Tensor packed_reward_to_go_cpu(const Tensor& rewards_in, const Tensor& mask_in, const Tensor& cu_in, double gamma,
                               c10::string_view holes) {
  check_cpu(rewards_in, "rewards");
  const int64_t T = rewards_in.numel();
  check_stream(rewards_in, T, "rewards");
  check_stream(mask_in, T, "response_mask");
  const bool skip = parse_holes(holes) == HOLES_SKIP;
  const Tensor cu = packed_offsets(cu_in, T), r = f32(rewards_in), mask = as_bool(mask_in);
  const int64_t N = cu.numel() - 1;
  Tensor out = at::empty({T}, r.options());
  const int64_t* p_cu = cu.data_ptr<int64_t>();
  const float* p_r = r.data_ptr<float>();
  const bool* p_m = mask.data_ptr<bool>();
  float* p_out = out.data_ptr<float>();
  const float g = static_cast<float>(gamma);
  std::vector<int64_t> beg, end;
  sequence_segments(p_cu, N, beg, end);
  for_seq_blocks(beg, end, T, [&](auto K_, const int64_t* ids) {
    constexpr int K = decltype(K_)::value;
    int64_t b[K], e[K];
    float running[K];
    for (int k = 0; k < K; ++k) b[k] = beg[ids[k]], e[k] = end[ids[k]], running[k] = 0.f;
    scan_segments<K>(b, e, [&](int k, int64_t i) { p_out[i] = rtg_step(p_r[i], p_m[i], g, skip, running[k]); });
  });
  return out;
}

Tensor packed_group_row_pass_cpu(const Tensor& rewards_in, const Tensor& mask_in, const Tensor& cu_in, double gamma,
                                 bool returns_stats, bool reward_m2) {
  check_cpu(rewards_in, "rewards");
  const int64_t T = rewards_in.numel();
  check_stream(rewards_in, T, "rewards");
  check_stream(mask_in, T, "response_mask");
  const Tensor cu = packed_offsets(cu_in, T), r = f32(rewards_in), mask = as_bool(mask_in);
  const int64_t N = cu.numel() - 1;
  Tensor stats = at::empty({N, kStats}, r.options().dtype(at::kDouble));
  const int64_t* p_cu = cu.data_ptr<int64_t>();
  const float* p_r = r.data_ptr<float>();
  const bool* p_m = mask.data_ptr<bool>();
  double* p_s = stats.data_ptr<double>();
  const float g = static_cast<float>(gamma);
  RowPassColumns cols;
  cols.returns_stats = returns_stats;
  cols.reward_m2 = reward_m2;
  // The response regions [s_i, c1): the padded rows.
  std::vector<int64_t> beg(N), end(p_cu + 1, p_cu + N + 1);
  at::parallel_for(0, N, seq_grain(T, N, 1), [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0; i < b1; ++i) beg[i] = first_generated(p_m, p_cu[i], p_cu[i + 1]);
  });
  for_seq_blocks(beg, end, T, [&](auto K_, const int64_t* ids) {
    constexpr int K = decltype(K_)::value;
    int64_t b[K], e[K], off[K + 1];
    off[0] = 0;
    for (int k = 0; k < K; ++k) b[k] = beg[ids[k]], e[k] = end[ids[k]], off[k + 1] = off[k] + e[k] - b[k];
    // The scan's scratch (not written out: the finish recomputes G, see group_cpu.cpp).
    thread_local std::vector<float> G;
    if (cols.returns_stats) {
      G.resize(off[K]);
      float running[K];
      for (int k = 0; k < K; ++k) running[k] = 0.f;
      scan_segments<K>(b, e, [&](int k, int64_t i) {
        G[off[k] + i - b[k]] = rtg_step(p_r[i], p_m[i], g, true, running[k]);
      });
    }
    for (int k = 0; k < K; ++k)
      row_stats(p_r + b[k], p_m + b[k], e[k] - b[k], cols.returns_stats ? G.data() + off[k] : nullptr, cols,
                p_s + ids[k] * kStats);
  });
  return stats;
}

// Per sequence: project only the hidden states its rewards read (each hidden row at most once),
// form the token rewards, then the row pass on them. No [T] scores tensor.
std::tuple<Tensor, Tensor> packed_fused_reward_group_row_pass_cpu(
    const Tensor& hidden_in, const Tensor& weight, const c10::optional<Tensor>& bias, const Tensor& mask_in,
    const Tensor& cu_in, const c10::optional<Tensor>& logprobs_in, const c10::optional<Tensor>& ref_in,
    double kl_coef, c10::string_view kl_estimator, OptRange kl_clamp, c10::string_view first, double beta_c,
    OptRange reward_clip, double gamma, const c10::optional<Tensor>& potential_weight,
    const c10::optional<Tensor>& potential_bias) {
  check_cpu(hidden_in, "hidden");
  Projection proj(packed_hidden(hidden_in), weight, bias);
  const cpu::Heads heads(proj, potential_weight, potential_bias);
  const RewardOptions ropt = reward_options(first, beta_c, kl_coef, kl_estimator, kl_clamp, reward_clip);
  const int64_t T = proj.hidden.size(1);
  check_stream(mask_in, T, "response_mask");
  const Tensor cu = packed_offsets(cu_in, T), mask = as_bool(mask_in);
  Tensor lp, ref;
  if (ropt.use_kl) {
    TORCH_CHECK_VALUE(logprobs_in.has_value() && ref_in.has_value(), "kl_coef != 0 needs logprobs and ref_logprobs");
    check_stream(*logprobs_in, T, "logprobs");
    check_stream(*ref_in, T, "ref_logprobs");
    lp = f32(*logprobs_in);
    ref = f32(*ref_in);
  }
  const int64_t N = cu.numel() - 1;
  const int64_t* p_cu = cu.data_ptr<int64_t>();
  const bool* p_m = mask.data_ptr<bool>();
  check_first_prompt(p_cu, N, p_m, ropt.first_prompt);
  auto opts = hidden_in.options().dtype(at::kFloat);
  Tensor rewards = at::empty({T}, opts);
  Tensor stats = at::empty({N, kStats}, opts.dtype(at::kDouble));
  const float* p_lp = ropt.use_kl ? lp.data_ptr<float>() : nullptr;
  const float* p_ref = ropt.use_kl ? ref.data_ptr<float>() : nullptr;
  float* p_rw = rewards.data_ptr<float>();
  double* p_s = stats.data_ptr<double>();
  const float g = static_cast<float>(gamma);
  R3HF_DISPATCH_HIDDEN(proj.hidden.scalar_type(), "r3hf::packed_fused_reward_group_row_pass", [&] {
    const scalar_t* base = proj.hidden.data_ptr<scalar_t>();
    parallel_seqs(N, seq_grain(T, N, proj.D), [&](int64_t begin, int64_t end) {
      thread_local std::vector<float> s;
      thread_local std::vector<char> need;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t c0 = p_cu[i], c1 = p_cu[i + 1], s0 = first_generated(p_m, c0, c1), L = c1 - s0;
        std::fill(p_rw + c0, p_rw + s0, 0.f);
        const bool* m = p_m + s0;
        float* rw = p_rw + s0;
        if (L > 0) {
          s.resize(L + 1);
          need.resize(L + 1);
          // need[0] only with first="prompt" (s0 > c0); reads stay in [s0 − 1, c1 − 1].
          needed_scores(m, L, ropt.first_prompt, reinterpret_cast<bool*>(need.data()));
          heads.fill(base, 0, s0 - 1, m, reinterpret_cast<const bool*>(need.data()), L, s.data());
          token_rewards_row(s.data(), m, p_lp ? p_lp + s0 : nullptr, p_ref ? p_ref + s0 : nullptr, L, ropt, rw);
        }
        row_pass_block<1>(rw, m, L, g, RowPassColumns{}, nullptr, p_s + i * kStats);
      }
    });
  });
  return {rewards, stats};
}

Tensor packed_group_finish_cpu(const Tensor& rewards_in, const Tensor& mask_in, const Tensor& cu_in,
                               const Tensor& shift_in, const Tensor& scale_in, double gamma, bool on_rewards) {
  check_cpu(rewards_in, "rewards");
  const int64_t T = rewards_in.numel();
  check_stream(rewards_in, T, "rewards");
  check_stream(mask_in, T, "response_mask");
  const Tensor cu = packed_offsets(cu_in, T), r = f32(rewards_in), mask = as_bool(mask_in);
  const Tensor shift = f32(shift_in), scale = f32(scale_in);
  const int64_t N = cu.numel() - 1;
  TORCH_CHECK_VALUE(shift.numel() == N && scale.numel() == N, "shift and scale must be [N] = [", N, "], got ",
                    shift.sizes(), " and ", scale.sizes());
  Tensor out = at::empty({T}, r.options());
  const int64_t* p_cu = cu.data_ptr<int64_t>();
  const float* p_r = r.data_ptr<float>();
  const bool* p_m = mask.data_ptr<bool>();
  const float* p_shift = shift.data_ptr<float>();
  const float* p_scale = scale.data_ptr<float>();
  float* p_out = out.data_ptr<float>();
  const float g = static_cast<float>(gamma);
  std::vector<int64_t> beg, end;
  sequence_segments(p_cu, N, beg, end);
  // finish_block (group_rows.h) with K sequences interleaved.
  for_seq_blocks(beg, end, T, [&](auto K_, const int64_t* ids) {
    constexpr int K = decltype(K_)::value;
    int64_t b[K], e[K];
    float running[K], sh[K], sc[K];
    for (int k = 0; k < K; ++k) {
      b[k] = beg[ids[k]], e[k] = end[ids[k]];
      running[k] = 0.f, sh[k] = p_shift[ids[k]], sc[k] = p_scale[ids[k]];
    }
    if (on_rewards) {
      scan_segments<K>(b, e, [&](int k, int64_t i) {
        p_out[i] = finish_step<true>(p_r[i], p_m[i], sh[k], sc[k], g, running[k]);
      });
    } else {
      scan_segments<K>(b, e, [&](int k, int64_t i) {
        p_out[i] = finish_step<false>(p_r[i], p_m[i], sh[k], sc[k], g, running[k]);
      });
    }
  });
  return out;
}

// --- per-position baselines (issue 21; r3hf/_group_stats.py steps 1p and 3p) -------------------

void check_seq_ids(const Tensor& ids, int64_t N, int64_t n_groups) {
  TORCH_CHECK_VALUE(ids.dim() == 1 && ids.numel() == N, "ids must be [N] = [", N, "] (one per sequence), got ",
                    ids.sizes());
  const int64_t* p = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < N; ++i)
    TORCH_CHECK_VALUE(p[i] >= 0 && p[i] < n_groups, "ids must be dense ids in [0, n_groups = ", n_groups, "), got ",
                      p[i]);
}

// -> (stats [N, 5] f64 with COUNT and SUM_R, sums [2, n_groups, width] f64, last [N] f64). One group
// per task (handed out as threads free up), its sequences in index order: each table cell is summed
// in a fixed order whatever the threads. Statistics over the response region [s_i, c1), as padded.
std::tuple<Tensor, Tensor, Tensor> packed_group_position_row_pass_cpu(
    const Tensor& rewards_in, const Tensor& mask_in, const Tensor& cu_in, const Tensor& ids_in, int64_t n_groups,
    int64_t width, double gamma, bool squares) {
  check_cpu(rewards_in, "rewards");
  const int64_t T = rewards_in.numel();
  check_stream(rewards_in, T, "rewards");
  check_stream(mask_in, T, "response_mask");
  const Tensor cu = packed_offsets(cu_in, T), r = f32(rewards_in), mask = as_bool(mask_in);
  const Tensor ids = cpu::as_long(ids_in);
  const int64_t N = cu.numel() - 1;
  TORCH_CHECK_VALUE(n_groups >= 0 && width >= 0, "n_groups and width must be >= 0, got ", n_groups, " and ", width);
  check_seq_ids(ids, N, n_groups);
  const int64_t* p_cu = cu.data_ptr<int64_t>();
  const float* p_r = r.data_ptr<float>();
  const bool* p_m = mask.data_ptr<bool>();
  std::vector<int64_t> beg(N);
  for (int64_t i = 0; i < N; ++i) {
    beg[i] = first_generated(p_m, p_cu[i], p_cu[i + 1]);
    TORCH_CHECK_VALUE(p_cu[i + 1] - beg[i] <= width, "width = ", width, " is shorter than sequence ", i,
                      "'s response region (", p_cu[i + 1] - beg[i], ")");
  }
  auto f64 = r.options().dtype(at::kDouble);
  Tensor stats = at::empty({N, kStats}, f64), sums = at::zeros({2, n_groups, width}, f64), last = at::empty({N}, f64);
  double *p_s = stats.data_ptr<double>(), *p_sums = sums.data_ptr<double>(), *p_last = last.data_ptr<double>();
  const float g = static_cast<float>(gamma);
  const cpu::GroupRows groups(ids.data_ptr<int64_t>(), N, n_groups);
  RowPassColumns cols;
  cols.returns_stats = false;
  cols.reward_m2 = false;
  parallel_seqs(n_groups, seq_grain(T, n_groups, 1), [&](int64_t g0, int64_t g1) {
    thread_local std::vector<float> G;
    for (int64_t grp = g0; grp < g1; ++grp) {
      double* sum = p_sums + grp * width;
      double* sq = squares ? p_sums + (n_groups + grp) * width : nullptr;
      for (int64_t j = groups.offsets[grp]; j < groups.offsets[grp + 1]; ++j) {
        const int64_t i = groups.order[j], b = beg[i], len = p_cu[i + 1] - b;
        G.resize(std::max<int64_t>(len, 1));
        float running = 0.f;
        for (int64_t t = len - 1; t >= 0; --t) G[t] = rtg_step(p_r[b + t], p_m[b + t], g, true, running);
        row_stats(p_r + b, p_m + b, len, nullptr, cols, p_s + i * kStats);
        p_last[i] = cpu::add_positions(G.data(), p_m + b, len, sum, sq);
      }
    }
  });
  return {stats, sums, last};
}

// A = m·(G − shift[id, p])·scale[id, p] over each whole sequence (0 at its prompt), K sequences
// interleaved as in packed_group_finish.
Tensor packed_group_position_finish_cpu(const Tensor& rewards_in, const Tensor& mask_in, const Tensor& cu_in,
                                        const Tensor& ids_in, const Tensor& shift_in, const Tensor& scale_in,
                                        double gamma) {
  check_cpu(rewards_in, "rewards");
  const int64_t T = rewards_in.numel();
  check_stream(rewards_in, T, "rewards");
  check_stream(mask_in, T, "response_mask");
  const Tensor cu = packed_offsets(cu_in, T), r = f32(rewards_in), mask = as_bool(mask_in);
  const Tensor ids = cpu::as_long(ids_in);
  const Tensor shift = f32(shift_in).contiguous(), scale = f32(scale_in).contiguous();
  TORCH_CHECK_VALUE(shift.dim() == 2 && scale.sizes() == shift.sizes(),
                    "shift and scale must both be [n_groups, W], got ", shift.sizes(), " and ", scale.sizes());
  const int64_t N = cu.numel() - 1, W = shift.size(1);
  check_seq_ids(ids, N, shift.size(0));
  const int64_t* p_cu = cu.data_ptr<int64_t>();
  const float* p_r = r.data_ptr<float>();
  const bool* p_m = mask.data_ptr<bool>();
  const int64_t* p_ids = ids.data_ptr<int64_t>();
  const float *p_shift = shift.data_ptr<float>(), *p_scale = scale.data_ptr<float>();
  std::vector<int64_t> n_gen(N);
  for (int64_t i = 0; i < N; ++i) {
    n_gen[i] = cpu::generated(p_m + p_cu[i], p_cu[i + 1] - p_cu[i]);
    TORCH_CHECK_VALUE(n_gen[i] <= W, "shift/scale width W = ", W, " is below sequence ", i, "'s ", n_gen[i],
                      " generated tokens");
  }
  Tensor out = at::empty({T}, r.options());
  float* p_out = out.data_ptr<float>();
  const float g = static_cast<float>(gamma);
  std::vector<int64_t> beg, end;
  sequence_segments(p_cu, N, beg, end);
  for_seq_blocks(beg, end, T, [&](auto K_, const int64_t* seqs) {
    constexpr int K = decltype(K_)::value;
    int64_t b[K], e[K], p[K];
    float running[K];
    const float *sh[K], *sc[K];
    for (int k = 0; k < K; ++k) {
      const int64_t i = seqs[k];
      b[k] = beg[i], e[k] = end[i], running[k] = 0.f, p[k] = n_gen[i] - 1;
      sh[k] = p_shift + p_ids[i] * W, sc[k] = p_scale + p_ids[i] * W;
    }
    scan_segments<K>(b, e, [&](int k, int64_t i) {
      p_out[i] = cpu::position_finish_step(p_r[i], p_m[i], sh[k], sc[k], g, running[k], p[k]);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(r3hf, CPU, m) {
  m.impl("packed_reward_to_go", &packed_reward_to_go_cpu);
  m.impl("packed_group_row_pass", &packed_group_row_pass_cpu);
  m.impl("packed_fused_reward_group_row_pass", &packed_fused_reward_group_row_pass_cpu);
  m.impl("packed_group_finish", &packed_group_finish_cpu);
  m.impl("packed_group_position_row_pass", &packed_group_position_row_pass_cpu);
  m.impl("packed_group_position_finish", &packed_group_position_finish_cpu);
}

}  // namespace r3hf
