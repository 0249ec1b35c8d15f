// CUDA implementations of torch.ops.r3hf.* (schemas in csrc/library.cpp; kernels in kernels.cuh).
// Built only when setup.py finds a CUDA toolkit and a CUDA torch (or R3HF_FORCE_CUDA=1).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <string>

#include "../op_args.h"
#include "kernels.cuh"

namespace r3hf {
namespace {

using at::Tensor;
const float* ptr_or_null(const Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

int64_t blocks(int64_t n, int64_t per) { return (n + per - 1) / per; }

// scores [B, K] of hidden rows (b, first[b] + k); need may be undefined (all positions).
void launch_project(const Tensor& hidden_in, const Tensor& weight, const c10::optional<Tensor>& bias,
                    const Tensor& first, const Tensor& need, int64_t K, Tensor& out) {
  const Tensor hidden = hidden_in.stride(2) == 1 ? hidden_in : hidden_in.contiguous();
  const int64_t B = hidden.size(0), D = hidden.size(2);
  const Tensor w = f32(weight.reshape({D}));
  Tensor b = bias.has_value() ? f32(bias->reshape({1})) : Tensor();
  const int64_t rows = B * K;
  if (rows == 0) return;
  const int per_block = 256;
  const dim3 grid(blocks(rows * cuda::kWarp, per_block));
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t* o_first = first.defined() ? first.data_ptr<int64_t>() : nullptr;
  const bool* m_need = need.defined() ? need.data_ptr<bool>() : nullptr;
#define R3HF_LAUNCH_PROJECT(T)                                                                                 \
  cuda::project_kernel<T><<<grid, per_block, 0, stream>>>(                                                     \
      reinterpret_cast<const T*>(hidden.data_ptr()), hidden.stride(0), hidden.stride(1), w.data_ptr<float>(), \
      ptr_or_null(b), D, o_first, m_need, B, K, out.data_ptr<float>())
  switch (hidden.scalar_type()) {
    case at::kFloat: R3HF_LAUNCH_PROJECT(float); break;
    case at::kDouble: R3HF_LAUNCH_PROJECT(double); break;
    case at::kHalf: R3HF_LAUNCH_PROJECT(__half); break;
    case at::kBFloat16: R3HF_LAUNCH_PROJECT(__nv_bfloat16); break;
    default: TORCH_CHECK_TYPE(false, "hidden must be fp32, fp64, fp16 or bf16, got ", hidden.scalar_type());
  }
#undef R3HF_LAUNCH_PROJECT
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

Tensor row_stats(const Tensor& mask) {
  const int64_t B = mask.size(0), L = mask.size(1);
  Tensor stats = at::empty({B, 2}, mask.options().dtype(at::kLong));
  if (B > 0)
    cuda::row_stats_kernel<<<B, cuda::kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(mask.data_ptr<bool>(), L,
                                                                                          stats.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return stats;
}

void launch_rows(cuda::RowArgs& args, int64_t B) {
  if (B == 0 || args.L == 0) return;
  cuda::rewards_gae_kernel<<<B, cuda::kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

Tensor prefix_scores_cuda(const Tensor& hidden, const Tensor& weight, const c10::optional<Tensor>& bias) {
  c10::cuda::CUDAGuard guard(hidden.device());
  Tensor out = at::empty({hidden.size(0), hidden.size(1)}, hidden.options().dtype(at::kFloat));
  launch_project(hidden, weight, bias, Tensor(), Tensor(), hidden.size(1), out);
  return out;
}

Tensor token_rewards_impl(const Tensor& scores_in, const Tensor& mask_in, const Tensor& prompt_len,
                          const c10::optional<Tensor>& logprobs, const c10::optional<Tensor>& ref,
                          const RewardOptions& opt, const c10::optional<Tensor>& potential_in) {
  c10::cuda::CUDAGuard guard(scores_in.device());
  const Tensor scores = f32(scores_in), mask = as_bool(mask_in);
  // potential (issue 24): Φ' like scores; the row kernel reads Φ from it and R from scores.
  Tensor potential;
  if (potential_in.has_value()) {
    TORCH_CHECK_VALUE(potential_in->device() == scores_in.device(), "potential must be on ", scores_in.device(),
                      " like scores, got ", potential_in->device());
    TORCH_CHECK_VALUE(potential_in->sizes() == scores_in.sizes(), "potential must have the shape of scores = ",
                      scores_in.sizes(), ", got ", potential_in->sizes());
    potential = f32(*potential_in);
  }
  const int64_t B = scores.size(0), S = scores.size(1), L = mask.size(1);
  const Tensor offset = (prompt_len.to(at::kLong) - 1).contiguous();
  Tensor lp, rf;
  if (opt.use_kl) {
    lp = f32(*logprobs);
    rf = f32(*ref);
  }
  const Tensor stats = row_stats(mask);
  Tensor out = at::empty({B, L}, scores.options());
  cuda::RowArgs args{};
  args.p_s = potential.defined() ? potential.data_ptr<float>() : scores.data_ptr<float>();
  args.p_r = potential.defined() ? scores.data_ptr<float>() : nullptr;
  args.s_stride = S;
  args.o_s_offset = offset.data_ptr<int64_t>();
  args.o_stats = stats.data_ptr<int64_t>();
  args.p_logprob = ptr_or_null(lp);
  args.p_ref = ptr_or_null(rf);
  args.m_mask = mask.data_ptr<bool>();
  args.L = L;
  args.ropt = opt;
  args.p_rewards_out = out.data_ptr<float>();
  launch_rows(args, B);
  return out;
}

Tensor redistribute_cuda(const Tensor& scores, const Tensor& mask, const Tensor& prompt_len, c10::string_view first,
                         double beta_c, const c10::optional<Tensor>& potential) {
  return token_rewards_impl(scores, mask, prompt_len, c10::nullopt, c10::nullopt,
                            reward_options(first, beta_c, 0.0, "k1", c10::nullopt, c10::nullopt), potential);
}

Tensor token_rewards_cuda(const Tensor& scores, const Tensor& mask, const Tensor& prompt_len,
                          const c10::optional<Tensor>& logprobs, const c10::optional<Tensor>& ref, double kl_coef,
                          c10::string_view est, OptRange kl_clamp, c10::string_view first, double beta_c,
                          OptRange reward_clip, const c10::optional<Tensor>& potential) {
  return token_rewards_impl(scores, mask, prompt_len, logprobs, ref,
                            reward_options(first, beta_c, kl_coef, est, kl_clamp, reward_clip), potential);
}

Tensor kl_penalty_cuda(const Tensor& logprobs, const Tensor& ref, c10::string_view est, OptRange clamp) {
  c10::cuda::CUDAGuard guard(logprobs.device());
  const Tensor lp = f32(logprobs), rf = f32(ref);
  Tensor out = at::empty(lp.sizes(), lp.options());
  const int64_t n = lp.numel();
  if (n > 0)
    cuda::kl_kernel<<<blocks(n, 256), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
        lp.data_ptr<float>(), rf.data_ptr<float>(), n, parse_estimator(est), parse_range("clamp", clamp), out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<Tensor, Tensor> gae_cuda(const Tensor& rewards, const Tensor& values, const Tensor& mask_in, double gamma,
                                    double lam, const c10::optional<Tensor>& bootstrap) {
  c10::cuda::CUDAGuard guard(rewards.device());
  const Tensor r = f32(rewards), v = f32(values), mask = as_bool(mask_in);
  const Tensor boot = bootstrap.has_value() ? f32(*bootstrap) : Tensor();
  const int64_t B = r.size(0), L = r.size(1);
  const Tensor stats = row_stats(mask);
  Tensor adv = at::empty({B, L}, r.options()), ret = at::empty({B, L}, r.options());
  cuda::RowArgs args{};
  args.o_stats = stats.data_ptr<int64_t>();
  args.p_rewards_in = r.data_ptr<float>();
  args.p_values = v.data_ptr<float>();
  args.p_bootstrap = ptr_or_null(boot);
  args.m_mask = mask.data_ptr<bool>();
  args.L = L;
  args.gopt = gae_options(gamma, lam);
  args.p_adv = adv.data_ptr<float>();
  args.p_ret = ret.data_ptr<float>();
  launch_rows(args, B);
  return {adv, ret};
}

// Projection of only the positions each row reads into a [B, L + 1] buffer, then one block per
// row for rewards, KL and GAE.
std::tuple<Tensor, Tensor, Tensor> fused_reward_gae_cuda(
    const Tensor& hidden, const Tensor& weight, const c10::optional<Tensor>& bias, const Tensor& values,
    const Tensor& mask_in, const Tensor& prompt_len, const c10::optional<Tensor>& logprobs,
    const c10::optional<Tensor>& ref, double kl_coef, c10::string_view est, OptRange kl_clamp, double gamma,
    double lam, c10::string_view first, double beta_c, OptRange reward_clip, const c10::optional<Tensor>& bootstrap,
    const c10::optional<Tensor>& potential_weight, const c10::optional<Tensor>& potential_bias) {
  c10::cuda::CUDAGuard guard(hidden.device());
  TORCH_CHECK_VALUE(potential_weight.has_value() || !potential_bias.has_value(),
                    "potential_bias is set but potential_weight is None");
  const RewardOptions ropt = reward_options(first, beta_c, kl_coef, est, kl_clamp, reward_clip);
  const Tensor mask = as_bool(mask_in), v = f32(values);
  const Tensor boot = bootstrap.has_value() ? f32(*bootstrap) : Tensor();
  const int64_t B = hidden.size(0), L = mask.size(1);
  Tensor lp, rf;
  if (ropt.use_kl) {
    lp = f32(*logprobs);
    rf = f32(*ref);
  }
  const Tensor stats = row_stats(mask);
  const Tensor first_pos = (prompt_len.to(at::kLong) - 1).contiguous();
  Tensor need = at::empty({B, L + 1}, mask.options());
  if (B > 0)
    cuda::need_kernel<<<blocks(B * (L + 1), 256), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
        mask.data_ptr<bool>(), stats.data_ptr<int64_t>(), B, L, ropt.first_prompt, need.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  Tensor s = at::empty({B, L + 1}, hidden.options().dtype(at::kFloat));
  if (!potential_weight.has_value()) {
    launch_project(hidden, weight, bias, first_pos, need, L + 1, s);
  } else {
    // A potential head (issue 24): a row reads R only at s[last + 1] and Φ' at its other needed
    // entries, disjoint sets, so each needed hidden row is still projected once, by one head.
    const Tensor k = at::arange(L + 1, stats.options()).unsqueeze(0);
    const Tensor last = stats.select(1, 1).unsqueeze(1);
    const Tensor at_r = need.logical_and(k.eq(last + 1).logical_and(last.ge(0))).contiguous();
    const Tensor at_phi = need.logical_and(at_r.logical_not()).contiguous();
    Tensor s_r = at::empty_like(s);
    launch_project(hidden, *potential_weight, potential_bias, first_pos, at_phi, L + 1, s);
    launch_project(hidden, weight, bias, first_pos, at_r, L + 1, s_r);
    s = at::where(at_r, s_r, s).contiguous();
  }
  auto opts = hidden.options().dtype(at::kFloat);
  Tensor rewards = at::empty({B, L}, opts), adv = at::empty({B, L}, opts), ret = at::empty({B, L}, opts);
  const Tensor zero_offset = at::zeros({B}, first_pos.options());
  cuda::RowArgs args{};
  args.p_s = s.data_ptr<float>();
  args.s_stride = L + 1;
  args.o_s_offset = zero_offset.data_ptr<int64_t>();
  args.o_stats = stats.data_ptr<int64_t>();
  args.p_logprob = ptr_or_null(lp);
  args.p_ref = ptr_or_null(rf);
  args.p_values = v.data_ptr<float>();
  args.p_bootstrap = ptr_or_null(boot);
  args.m_mask = mask.data_ptr<bool>();
  args.L = L;
  args.ropt = ropt;
  args.gopt = gae_options(gamma, lam);
  args.p_rewards_out = rewards.data_ptr<float>();
  args.p_adv = adv.data_ptr<float>();
  args.p_ret = ret.data_ptr<float>();
  launch_rows(args, B);
  return {rewards, adv, ret};
}

}  // namespace

TORCH_LIBRARY_IMPL(r3hf, CUDA, m) {
  m.impl("prefix_scores", &prefix_scores_cuda);
  m.impl("redistribute", &redistribute_cuda);
  m.impl("kl_penalty", &kl_penalty_cuda);
  m.impl("token_rewards", &token_rewards_cuda);
  m.impl("gae", &gae_cuda);
  m.impl("fused_reward_gae", &fused_reward_gae_cuda);
}

}  // namespace r3hf
