// CPU kernels of the packed ops (cu_seqlens; schemas in csrc/library.cpp, contract in
// csrc/cpu/packed_common.h): token rewards, GAE, the fused reward + GAE, and the response-region
// mask masked_whiten(transform_masked=True) needs. prefix_scores and kl_penalty need no kernel of
// their own (per position), and masked_whiten's statistics are over the mask as in the padded op
// (r3hf/backends/cpp.py composes them).
//
// Every op runs at::parallel_for over sequences, one sequence per thread, with the padded row
// functions (r3hf_math.h, rewards_row.h) on pointers into the stream: the same operations in the
// same order as the padded kernel on the padded row, so the same bits for any thread count.
// Outputs are 0 outside the response regions.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../op_args.h"
#include "../r3hf_math.h"
#include "cpu_common.h"
#include "packed_common.h"
#include "rewards_row.h"

namespace r3hf {
namespace {

using at::Tensor;
using cpu::check_cpu;
using cpu::check_first_prompt;
using cpu::check_stream;
using cpu::contiguous_row_rewards;
using cpu::first_generated;
using cpu::packed_bootstrap;
using cpu::packed_hidden;
using cpu::packed_offsets;
using cpu::parallel_seqs;
using cpu::Projection;
using cpu::seq_grain;

void zero(float* p, int64_t n) { std::fill(p, p + n, 0.f); }

// logprobs / ref_logprobs [T] as fp32 when the KL term is on (undefined tensors otherwise).
std::pair<Tensor, Tensor> kl_inputs(const RewardOptions& opt, const c10::optional<Tensor>& logprobs,
                                    const c10::optional<Tensor>& ref, int64_t T) {
  if (!opt.use_kl) return {};
  TORCH_CHECK_VALUE(logprobs.has_value() && ref.has_value(), "kl_coef != 0 needs logprobs and ref_logprobs");
  check_stream(*logprobs, T, "logprobs");
  check_stream(*ref, T, "ref_logprobs");
  return {f32(*logprobs), f32(*ref)};
}

Tensor packed_token_rewards_cpu(const Tensor& scores_in, const Tensor& mask_in, const Tensor& cu_in,
                                const c10::optional<Tensor>& logprobs_in, const c10::optional<Tensor>& ref_in,
                                double kl_coef, c10::string_view kl_estimator, OptRange kl_clamp,
                                c10::string_view first, double beta_c, OptRange reward_clip,
                                const c10::optional<Tensor>& potential_in) {
  check_cpu(scores_in, "scores");
  const RewardOptions opt = reward_options(first, beta_c, kl_coef, kl_estimator, kl_clamp, reward_clip);
  const int64_t T = scores_in.numel();
  check_stream(scores_in, T, "scores");
  check_stream(mask_in, T, "response_mask");
  const Tensor cu = packed_offsets(cu_in, T), scores = f32(scores_in), mask = as_bool(mask_in);
  // potential (issue 24): Φ' [T]; Φ is read from it and R from scores, in place (as the padded op).
  Tensor potential;
  if (potential_in.has_value()) {
    check_cpu(*potential_in, "potential");
    check_stream(*potential_in, T, "potential");
    potential = f32(*potential_in);
  }
  const auto [lp, ref] = kl_inputs(opt, logprobs_in, ref_in, T);
  const int64_t N = cu.numel() - 1;
  const int64_t* p_cu = cu.data_ptr<int64_t>();
  const bool* p_m = mask.data_ptr<bool>();
  check_first_prompt(p_cu, N, p_m, opt.first_prompt);
  Tensor out = at::empty({T}, scores.options());
  const float* p_scores = scores.data_ptr<float>();
  const float* p_phi = potential.defined() ? potential.data_ptr<float>() : p_scores;
  const float* p_lp = lp.defined() ? lp.data_ptr<float>() : nullptr;
  const float* p_ref = ref.defined() ? ref.data_ptr<float>() : nullptr;
  float* p_out = out.data_ptr<float>();
  at::parallel_for(0, N, seq_grain(T, N, 1), [&](int64_t begin, int64_t end) {
    std::vector<float> buf, buf_r;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t c0 = p_cu[i], c1 = p_cu[i + 1], s0 = first_generated(p_m, c0, c1), L = c1 - s0;
      zero(p_out + c0, s0 - c0);
      if (L == 0) continue;
      const float* lp_row = p_lp ? p_lp + s0 : nullptr;
      const float* ref_row = p_ref ? p_ref + s0 : nullptr;
      // The row's s[k] = Φ[s0 − 1 + k], k in [0, L] (Φ: the scores, or the potential, whose row r
      // of the scores is then read at last + 1 only): in place when s0 − 1 is a prompt token of
      // this sequence. Without a prompt token (first="zero" only, see check_first_prompt) s[0] = 0
      // comes from a copy, so the previous sequence's entries are never read (nor pointed at).
      const float* s = p_phi + s0 - 1;
      const float* r = potential.defined() ? p_scores + s0 - 1 : nullptr;
      if (s0 == c0) {
        buf.resize(L + 1);
        buf[0] = 0.f;
        std::copy(p_phi + s0, p_phi + c1, buf.begin() + 1);
        s = buf.data();
        if (r != nullptr) {
          buf_r.resize(L + 1);
          buf_r[0] = 0.f;
          std::copy(p_scores + s0, p_scores + c1, buf_r.begin() + 1);
          r = buf_r.data();
        }
      }
      if (!contiguous_row_rewards(s, p_m + s0, lp_row, ref_row, L, opt, p_out + s0, r))
        token_rewards_row(s, p_m + s0, lp_row, ref_row, L, opt, p_out + s0, r);
    }
  });
  return out;
}

// GAE needs no region: the masked prompt positions before s_i come last in the backward scan,
// carry the state unchanged and get 0, so the scan over [c0, c1) is the padded row's.
std::tuple<Tensor, Tensor> packed_gae_cpu(const Tensor& rewards_in, const Tensor& values_in, const Tensor& mask_in,
                                          const Tensor& cu_in, double gamma, double lam,
                                          const c10::optional<Tensor>& bootstrap_in) {
  check_cpu(rewards_in, "rewards");
  const int64_t T = rewards_in.numel();
  check_stream(rewards_in, T, "rewards");
  check_stream(values_in, T, "values");
  check_stream(mask_in, T, "response_mask");
  const Tensor cu = packed_offsets(cu_in, T), r = f32(rewards_in), v = f32(values_in), mask = as_bool(mask_in);
  const int64_t N = cu.numel() - 1;
  const Tensor boot = packed_bootstrap(bootstrap_in, N);
  const GaeOptions opt = gae_options(gamma, lam);
  Tensor adv = at::empty({T}, r.options()), ret = at::empty({T}, r.options());
  const int64_t* p_cu = cu.data_ptr<int64_t>();
  const float* p_r = r.data_ptr<float>();
  const float* p_v = v.data_ptr<float>();
  const bool* p_m = mask.data_ptr<bool>();
  const float* p_boot = boot.defined() ? boot.data_ptr<float>() : nullptr;
  float* p_adv = adv.data_ptr<float>();
  float* p_ret = ret.data_ptr<float>();
  at::parallel_for(0, N, seq_grain(T, N, 1), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t c0 = p_cu[i], n = p_cu[i + 1] - c0;
      gae_row(p_r + c0, p_v + c0, p_m + c0, n, p_boot ? p_boot[i] : 0.f, opt, p_adv + c0, p_ret + c0);
    }
  });
  return {adv, ret};
}

// One pass per sequence, as the padded fused op per row: project only the hidden states the
// row's rewards read (each hidden row at most once), then rewards, KL and GAE on sequence-sized
// buffers. No [T] scores tensor.
std::tuple<Tensor, Tensor, Tensor> packed_fused_reward_gae_cpu(
    const Tensor& hidden_in, const Tensor& weight, const c10::optional<Tensor>& bias, const Tensor& values_in,
    const Tensor& mask_in, const Tensor& cu_in, const c10::optional<Tensor>& logprobs_in,
    const c10::optional<Tensor>& ref_in, double kl_coef, c10::string_view kl_estimator, OptRange kl_clamp,
    double gamma, double lam, c10::string_view first, double beta_c, OptRange reward_clip,
    const c10::optional<Tensor>& bootstrap_in, const c10::optional<Tensor>& potential_weight,
    const c10::optional<Tensor>& potential_bias) {
  check_cpu(hidden_in, "hidden");
  Projection proj(packed_hidden(hidden_in), weight, bias);
  const cpu::Heads heads(proj, potential_weight, potential_bias);
  const RewardOptions ropt = reward_options(first, beta_c, kl_coef, kl_estimator, kl_clamp, reward_clip);
  const GaeOptions gopt = gae_options(gamma, lam);
  const int64_t T = proj.hidden.size(1);
  check_stream(values_in, T, "values");
  check_stream(mask_in, T, "response_mask");
  const Tensor cu = packed_offsets(cu_in, T), v = f32(values_in), mask = as_bool(mask_in);
  const auto [lp, ref] = kl_inputs(ropt, logprobs_in, ref_in, T);
  const int64_t N = cu.numel() - 1;
  const Tensor boot = packed_bootstrap(bootstrap_in, N);
  const int64_t* p_cu = cu.data_ptr<int64_t>();
  const bool* p_m = mask.data_ptr<bool>();
  check_first_prompt(p_cu, N, p_m, ropt.first_prompt);
  auto opts = hidden_in.options().dtype(at::kFloat);
  Tensor rewards = at::empty({T}, opts), adv = at::empty({T}, opts), ret = at::empty({T}, opts);
  const float* p_v = v.data_ptr<float>();
  const float* p_lp = lp.defined() ? lp.data_ptr<float>() : nullptr;
  const float* p_ref = ref.defined() ? ref.data_ptr<float>() : nullptr;
  const float* p_boot = boot.defined() ? boot.data_ptr<float>() : nullptr;
  float* p_rw = rewards.data_ptr<float>();
  float* p_adv = adv.data_ptr<float>();
  float* p_ret = ret.data_ptr<float>();
  R3HF_DISPATCH_HIDDEN(proj.hidden.scalar_type(), "r3hf::packed_fused_reward_gae", [&] {
    const scalar_t* base = proj.hidden.data_ptr<scalar_t>();
    parallel_seqs(N, seq_grain(T, N, proj.D), [&](int64_t begin, int64_t end) {
      thread_local std::vector<float> s;
      thread_local std::vector<char> need;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t c0 = p_cu[i], c1 = p_cu[i + 1], s0 = first_generated(p_m, c0, c1), L = c1 - s0;
        zero(p_rw + c0, s0 - c0);
        zero(p_adv + c0, s0 - c0);
        zero(p_ret + c0, s0 - c0);
        if (L == 0) continue;
        const bool* m = p_m + s0;
        s.resize(L + 1);
        need.resize(L + 1);
        // need[0] (Φ_1 at s0 − 1) only with first="prompt", where s0 > c0; the last read is at most
        // position c1 − 1: never outside the sequence.
        needed_scores(m, L, ropt.first_prompt, reinterpret_cast<bool*>(need.data()));
        heads.fill(base, 0, s0 - 1, m, reinterpret_cast<const bool*>(need.data()), L, s.data());
        float* rw = p_rw + s0;
        token_rewards_row(s.data(), m, p_lp ? p_lp + s0 : nullptr, p_ref ? p_ref + s0 : nullptr, L, ropt, rw);
        gae_row(rw, p_v + s0, m, L, p_boot ? p_boot[i] : 0.f, gopt, p_adv + s0, p_ret + s0);
      }
    });
  });
  return {rewards, adv, ret};
}

// bool [T]: true in the response regions [s_i, cu[i+1]) (generated tokens, holes, trailing
// non-generated tokens), false at prompt positions and in sequences with no generated token.
Tensor packed_response_region_cpu(const Tensor& mask_in, const Tensor& cu_in) {
  check_cpu(mask_in, "response_mask");
  const int64_t T = mask_in.numel();
  check_stream(mask_in, T, "response_mask");
  const Tensor cu = packed_offsets(cu_in, T), mask = as_bool(mask_in);
  const int64_t N = cu.numel() - 1;
  Tensor out = at::empty({T}, mask.options());
  const int64_t* p_cu = cu.data_ptr<int64_t>();
  const bool* p_m = mask.data_ptr<bool>();
  bool* p_out = out.data_ptr<bool>();
  at::parallel_for(0, N, seq_grain(T, N, 1), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t c0 = p_cu[i], c1 = p_cu[i + 1], s0 = first_generated(p_m, c0, c1);
      std::fill(p_out + c0, p_out + s0, false);
      std::fill(p_out + s0, p_out + c1, true);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(r3hf, CPU, m) {
  m.impl("packed_token_rewards", &packed_token_rewards_cpu);
  m.impl("packed_gae", &packed_gae_cpu);
  m.impl("packed_fused_reward_gae", &packed_fused_reward_gae_cpu);
  m.impl("packed_response_region", &packed_response_region_cpu);
}

}  // namespace r3hf
