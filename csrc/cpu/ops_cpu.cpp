// CPU implementations of torch.ops.r3hf.* (schemas in csrc/library.cpp).
//
// Parallel over rows with at::parallel_for; each row is computed by one thread in a fixed order,
// so results are bitwise identical for any thread count. The per-row math is r3hf_math.h (shared
// with the CUDA code); the projection is dot.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "../op_args.h"
#include "../r3hf_math.h"
#include "cpu_common.h"
#include "rewards_row.h"

namespace r3hf {
namespace {

using at::Tensor;
using cpu::as_long;
using cpu::check_cpu;
using cpu::check_prompt_len;
using cpu::contiguous_row_rewards;
using cpu::grain;
using cpu::load_row_scores;
using cpu::Projection;

Tensor prefix_scores_cpu(const Tensor& hidden, const Tensor& weight, const c10::optional<Tensor>& bias) {
  check_cpu(hidden, "hidden");
  Projection proj(hidden, weight, bias);
  const int64_t B = hidden.size(0), S = hidden.size(1);
  Tensor out = at::empty({B, S}, hidden.options().dtype(at::kFloat));
  float* p_out = out.data_ptr<float>();
  R3HF_DISPATCH_HIDDEN(proj.hidden.scalar_type(), "r3hf::prefix_scores", [&] {
    const scalar_t* base = proj.hidden.data_ptr<scalar_t>();
    at::parallel_for(0, B * S, grain(proj.D), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) p_out[i] = proj.score(base, i / S, i % S);
    });
  });
  return out;
}

// contiguous_row_rewards: csrc/cpu/rewards_row.h.

// potential (issue 24): Φ' [B, S] like scores. The row kernels then read Φ' from it and R (each
// row's scores[last + 1]) from scores, in place: neither is copied when already contiguous fp32.
Tensor token_rewards_impl(const Tensor& scores_in, const Tensor& mask_in, const Tensor& prompt_len_in,
                          const c10::optional<Tensor>& logprobs_in, const c10::optional<Tensor>& ref_in,
                          const RewardOptions& opt, const c10::optional<Tensor>& potential_in) {
  check_cpu(scores_in, "scores");
  TORCH_CHECK_VALUE(scores_in.dim() == 2 && mask_in.dim() == 2, "scores and response_mask must be 2-D");
  const Tensor scores = f32(scores_in), mask = as_bool(mask_in), prompt_len = as_long(prompt_len_in);
  Tensor potential;
  if (potential_in.has_value()) {
    check_cpu(*potential_in, "potential");
    TORCH_CHECK_VALUE(potential_in->sizes() == scores_in.sizes(), "potential must have the shape of scores = ",
                      scores_in.sizes(), ", got ", potential_in->sizes());
    potential = f32(*potential_in);
  }
  const int64_t B = scores.size(0), S = scores.size(1), L = mask.size(1);
  TORCH_CHECK_VALUE(mask.size(0) == B && prompt_len.numel() == B, "response_mask/prompt_len must have B = ", B,
                    " rows");
  Tensor lp, ref;
  if (opt.use_kl) {
    TORCH_CHECK_VALUE(logprobs_in.has_value() && ref_in.has_value(), "kl_coef != 0 needs logprobs and ref_logprobs");
    lp = f32(*logprobs_in);
    ref = f32(*ref_in);
    TORCH_CHECK_VALUE(lp.sizes() == mask.sizes() && ref.sizes() == mask.sizes(), "logprobs must be [B, L]");
  }
  Tensor out = at::empty({B, L}, scores.options());
  const float* p_scores = scores.data_ptr<float>();
  // Φ: the scores themselves, or the potential; R is always read from p_scores (p_r, null without one).
  const float* p_phi = potential.defined() ? potential.data_ptr<float>() : p_scores;
  const bool* p_mask = mask.data_ptr<bool>();
  const int64_t* p_len = prompt_len.data_ptr<int64_t>();
  const float* p_lp = opt.use_kl ? lp.data_ptr<float>() : nullptr;
  const float* p_ref = opt.use_kl ? ref.data_ptr<float>() : nullptr;
  float* p_out = out.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) check_prompt_len(p_len[b], L, S, opt.first_prompt);
  at::parallel_for(0, B, grain(L), [&](int64_t begin, int64_t end) {
    std::vector<float> s;
    for (int64_t b = begin; b < end; ++b) {
      const float* lp_row = p_lp ? p_lp + b * L : nullptr;
      const float* ref_row = p_ref ? p_ref + b * L : nullptr;
      // s[k] = Φ[prompt_len − 1 + k], read in place (validated: prompt_len + L <= S); R at k = last + 1
      // from the scores row, same offset (last + 1 >= 1).
      const float* r_row = potential.defined() ? p_scores + b * S + p_len[b] - 1 : nullptr;
      if (contiguous_row_rewards(p_phi + b * S + p_len[b] - 1, p_mask + b * L, lp_row, ref_row, L, opt,
                                 p_out + b * L, r_row))
        continue;
      s.resize(L + 1);
      load_row_scores(p_phi + b * S, S, p_len[b], L, s.data());
      token_rewards_row(s.data(), p_mask + b * L, lp_row, ref_row, L, opt, p_out + b * L, r_row);
    }
  });
  return out;
}

Tensor redistribute_cpu(const Tensor& scores, const Tensor& response_mask, const Tensor& prompt_len,
                        c10::string_view first, double beta_c, const c10::optional<Tensor>& potential) {
  const RewardOptions opt = reward_options(first, beta_c, 0.0, "k1", c10::nullopt, c10::nullopt);
  return token_rewards_impl(scores, response_mask, prompt_len, c10::nullopt, c10::nullopt, opt, potential);
}

Tensor token_rewards_cpu(const Tensor& scores, const Tensor& response_mask, const Tensor& prompt_len,
                         const c10::optional<Tensor>& logprobs, const c10::optional<Tensor>& ref_logprobs,
                         double kl_coef, c10::string_view kl_estimator, OptRange kl_clamp,
                         c10::string_view first, double beta_c, OptRange reward_clip,
                         const c10::optional<Tensor>& potential) {
  const RewardOptions opt = reward_options(first, beta_c, kl_coef, kl_estimator, kl_clamp, reward_clip);
  return token_rewards_impl(scores, response_mask, prompt_len, logprobs, ref_logprobs, opt, potential);
}

// Elementwise, so composed of ATen's vectorised CPU kernels in exactly the reference's order (same
// bits as r3hf/reference/rewards.py): a scalar loop over expm1f is ~10x slower than torch here.
Tensor kl_penalty_cpu(const Tensor& logprobs_in, const Tensor& ref_in, c10::string_view estimator,
                      OptRange clamp) {
  check_cpu(logprobs_in, "logprobs");
  TORCH_CHECK_VALUE(logprobs_in.sizes() == ref_in.sizes(), "logprobs and ref_logprobs must have the same shape");
  const int est = parse_estimator(estimator);
  parse_range("clamp", clamp);
  const Tensor d = logprobs_in.to(at::kFloat) - ref_in.to(at::kFloat);
  Tensor kl;
  switch (est) {
    case KL_K2: kl = (d * 0.5) * d; break;  // the reference's 0.5 * d * d
    case KL_K3: kl = at::expm1(-d) + d; break;
    case KL_ABS: kl = d.abs(); break;
    default: kl = d; break;
  }
  if (clamp.has_value()) kl = kl.clamp((*clamp)[0], (*clamp)[1]);
  return kl.contiguous();
}

std::tuple<Tensor, Tensor> gae_cpu(const Tensor& rewards_in, const Tensor& values_in, const Tensor& mask_in,
                                   double gamma, double lam, const c10::optional<Tensor>& bootstrap_in) {
  check_cpu(rewards_in, "rewards");
  TORCH_CHECK_VALUE(rewards_in.dim() == 2 && values_in.sizes() == rewards_in.sizes() &&
                        mask_in.sizes() == rewards_in.sizes(),
                    "rewards, values and response_mask must all be [B, L]");
  const Tensor r = f32(rewards_in), v = f32(values_in), mask = as_bool(mask_in);
  const int64_t B = r.size(0), L = r.size(1);
  Tensor boot;
  if (bootstrap_in.has_value()) {
    boot = f32(*bootstrap_in);
    TORCH_CHECK_VALUE(boot.numel() == B, "bootstrap must be [B] = [", B, "]");
  }
  const GaeOptions opt = gae_options(gamma, lam);
  Tensor adv = at::empty({B, L}, r.options()), ret = at::empty({B, L}, r.options());
  const float* p_r = r.data_ptr<float>();
  const float* p_v = v.data_ptr<float>();
  const bool* p_m = mask.data_ptr<bool>();
  const float* p_boot = boot.defined() ? boot.data_ptr<float>() : nullptr;
  float* p_adv = adv.data_ptr<float>();
  float* p_ret = ret.data_ptr<float>();
  at::parallel_for(0, B, grain(L), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      gae_row(p_r + b * L, p_v + b * L, p_m + b * L, L, p_boot ? p_boot[b] : 0.f, opt, p_adv + b * L, p_ret + b * L);
  });
  return {adv, ret};
}

// One pass per row: project only the hidden states the row's rewards read, then rewards, KL and
// GAE on row-sized buffers. Nothing of size [B, S] is materialised.
std::tuple<Tensor, Tensor, Tensor> fused_reward_gae_cpu(
    const Tensor& hidden, const Tensor& weight, const c10::optional<Tensor>& bias, const Tensor& values_in,
    const Tensor& mask_in, const Tensor& prompt_len_in, const c10::optional<Tensor>& logprobs_in,
    const c10::optional<Tensor>& ref_in, double kl_coef, c10::string_view kl_estimator,
    OptRange kl_clamp, double gamma, double lam, c10::string_view first, double beta_c,
    OptRange reward_clip, const c10::optional<Tensor>& bootstrap_in,
    const c10::optional<Tensor>& potential_weight, const c10::optional<Tensor>& potential_bias) {
  check_cpu(hidden, "hidden");
  Projection proj(hidden, weight, bias);
  const cpu::Heads heads(proj, potential_weight, potential_bias);
  const RewardOptions ropt = reward_options(first, beta_c, kl_coef, kl_estimator, kl_clamp, reward_clip);
  const GaeOptions gopt = gae_options(gamma, lam);
  const Tensor v = f32(values_in), mask = as_bool(mask_in), prompt_len = as_long(prompt_len_in);
  const int64_t B = hidden.size(0), S = hidden.size(1), L = mask.size(1);
  TORCH_CHECK_VALUE(mask.size(0) == B && v.sizes() == mask.sizes() && prompt_len.numel() == B,
                    "values/response_mask must be [B, L] and prompt_len [B] with B = ", B);
  Tensor lp, ref, boot;
  if (ropt.use_kl) {
    TORCH_CHECK_VALUE(logprobs_in.has_value() && ref_in.has_value(), "kl_coef != 0 needs logprobs and ref_logprobs");
    lp = f32(*logprobs_in);
    ref = f32(*ref_in);
    TORCH_CHECK_VALUE(lp.sizes() == mask.sizes() && ref.sizes() == mask.sizes(), "logprobs must be [B, L]");
  }
  if (bootstrap_in.has_value()) {
    boot = f32(*bootstrap_in);
    TORCH_CHECK_VALUE(boot.numel() == B, "bootstrap must be [B] = [", B, "]");
  }
  const int64_t* p_len = prompt_len.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) check_prompt_len(p_len[b], L, S, ropt.first_prompt);
  auto opts = hidden.options().dtype(at::kFloat);
  Tensor rewards = at::empty({B, L}, opts), adv = at::empty({B, L}, opts), ret = at::empty({B, L}, opts);
  const bool* p_m = mask.data_ptr<bool>();
  const float* p_v = v.data_ptr<float>();
  const float* p_lp = ropt.use_kl ? lp.data_ptr<float>() : nullptr;
  const float* p_ref = ropt.use_kl ? ref.data_ptr<float>() : nullptr;
  const float* p_boot = boot.defined() ? boot.data_ptr<float>() : nullptr;
  float* p_rw = rewards.data_ptr<float>();
  float* p_adv = adv.data_ptr<float>();
  float* p_ret = ret.data_ptr<float>();
  R3HF_DISPATCH_HIDDEN(proj.hidden.scalar_type(), "r3hf::fused_reward_gae", [&] {
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
        gae_row(rw, p_v + b * L, m, L, p_boot ? p_boot[b] : 0.f, gopt, p_adv + b * L, p_ret + b * L);
      }
    });
  });
  return {rewards, adv, ret};
}

}  // namespace

TORCH_LIBRARY_IMPL(r3hf, CPU, m) {
  m.impl("prefix_scores", &prefix_scores_cpu);
  m.impl("redistribute", &redistribute_cpu);
  m.impl("kl_penalty", &kl_penalty_cpu);
  m.impl("token_rewards", &token_rewards_cpu);
  m.impl("gae", &gae_cpu);
  m.impl("fused_reward_gae", &fused_reward_gae_cpu);
}

}  // namespace r3hf
