// Conversion of the ops' schema arguments (strings, optional ranges, floats) into the options of
// r3hf_math.h, shared by the CPU (cpu/ops_cpu.cpp) and CUDA (cuda/ops_cuda.cu) implementations.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <string>

#include "group_math.h"
#include "r3hf_math.h"

namespace r3hf {

using OptRange = c10::optional<at::ArrayRef<double>>;

inline int parse_estimator(c10::string_view name) {
  if (name == "k1") return KL_K1;
  if (name == "k2") return KL_K2;
  if (name == "k3") return KL_K3;
  if (name == "abs") return KL_ABS;
  TORCH_CHECK_VALUE(false, "estimator must be one of ['k1', 'k2', 'k3', 'abs'], got '", std::string(name), "'");
}

inline bool parse_first(c10::string_view first) {
  TORCH_CHECK_VALUE(first == "prompt" || first == "zero", "first must be one of ['prompt', 'zero'], got '",
                    std::string(first), "'");
  return first == "prompt";
}

inline int parse_holes(c10::string_view holes) {
  if (holes == "skip") return HOLES_SKIP;
  if (holes == "discount") return HOLES_DISCOUNT;
  TORCH_CHECK_VALUE(false, "holes must be one of ['skip', 'discount'], got '", std::string(holes), "'");
}

inline Range parse_range(const char* name, const OptRange& r) {
  Range out;
  if (!r.has_value()) return out;
  TORCH_CHECK_VALUE(r->size() == 2, name, " must be None or [low, high], got ", r->size(), " values");
  out.on = true;
  out.low = static_cast<float>((*r)[0]);
  out.high = static_cast<float>((*r)[1]);
  return out;
}

// Scalars are rounded to fp32 as torch rounds a Python float multiplying an fp32 tensor; 1 − β_c is
// formed in double first, as the reference computes it in Python.
inline RewardOptions reward_options(c10::string_view first, double beta_c, double kl_coef, c10::string_view estimator,
                                    const OptRange& kl_clamp, const OptRange& reward_clip) {
  RewardOptions o;
  o.first_prompt = parse_first(first);
  o.pure_dense = beta_c == 1.0;
  o.beta_c = static_cast<float>(beta_c);
  o.one_minus_beta = static_cast<float>(1.0 - beta_c);
  o.reward_clip = parse_range("reward_clip", reward_clip);
  o.use_kl = kl_coef != 0.0;
  o.kl_coef = static_cast<float>(kl_coef);
  o.kl_estimator = parse_estimator(estimator);
  o.kl_clamp = parse_range("kl_clamp", kl_clamp);
  return o;
}

inline GaeOptions gae_options(double gamma, double lam) {
  GaeOptions o;
  o.gamma = static_cast<float>(gamma);
  o.gamma_lam = static_cast<float>(gamma * lam);
  return o;
}

// [B, L] inputs as contiguous fp32 / bool (no copy when they already are).
inline at::Tensor f32(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }
inline at::Tensor as_bool(const at::Tensor& t) { return (t.scalar_type() == at::kBool ? t : t.ne(0)).contiguous(); }

}  // namespace r3hf
