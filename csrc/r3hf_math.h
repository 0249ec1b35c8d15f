// Per-row math of r3hf's ops, shared by the CPU (ops.cpp) and CUDA (cuda/*.cu) code.
//
// Plain C++17 with no torch include, so nvcc can compile the CUDA kernels that use it without
// torch's headers. Every formula mirrors r3hf/reference/*.py operation by operation (same fp32
// roundings, same order), which is why e.g. gamma * lam is formed in double before the cast.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define R3HF_HD __host__ __device__ __forceinline__
#else
#define R3HF_HD inline
#endif

namespace r3hf {

enum KlEstimator : int { KL_K1 = 0, KL_K2 = 1, KL_K3 = 2, KL_ABS = 3 };

// An optional (low, high) range; `on` false means no clamp.
struct Range {
  bool on = false;
  float low = 0.f;
  float high = 0.f;
};

// torch.clamp(x, low, high) = min(max(x, low), high), NaN kept.
R3HF_HD float clamp_range(float x, Range r) {
  if (!r.on || x != x) return x;
  x = x < r.low ? r.low : x;
  return x > r.high ? r.high : x;
}

// kl_penalty for one token, d = logprob − ref_logprob (both already fp32).
R3HF_HD float kl_estimate(float logprob, float ref_logprob, int estimator, Range clamp) {
  const float d = logprob - ref_logprob;
  float kl;
  switch (estimator) {
    case KL_K2: kl = 0.5f * d * d; break;
    case KL_K3: kl = expm1f(-d) + d; break;
    case KL_ABS: kl = fabsf(d); break;
    default: kl = d; break;
  }
  return clamp_range(kl, clamp);
}

// Options of token_rewards, converted once from the op's arguments.
struct RewardOptions {
  bool first_prompt = true;  // Φ_1 = scores[prompt_len − 1] (true) or 0 (first="zero")
  bool pure_dense = true;    // beta_c == 1.0: the reference returns the dense part as is
  float beta_c = 1.f;        // float(beta_c)
  float one_minus_beta = 0.f;  // float(1.0 − beta_c), formed in double as the reference does
  Range reward_clip;
  bool use_kl = false;       // kl_coef != 0
  float kl_coef = 0.f;
  int kl_estimator = KL_K1;
  Range kl_clamp;
};

struct GaeOptions {
  float gamma = 1.f;
  float gamma_lam = 0.95f;  // float(gamma * lam), the product formed in double
};

// Row-local view used by redistribute: s[k] = scores[prompt_len − 1 + k] for k in [0, L], so the
// score before response token j is s[j] and after it is s[j + 1]. Only the entries a row needs
// are read: s[0] (first="prompt") for the first generated token, s[j] for every later generated
// token j, and s[j_last + 1].
//
// Writes the token rewards of one row (β_c-mixed, clipped, minus the KL term, 0 where masked).
// logprob/ref_logprob may be null when opt.use_kl is false.
//
// A separate potential (issue 24): s is the row of Φ' and r the row of the prefix scores, same
// indexing; R = r[j_last + 1] is the only entry read from r (null r: R = s[j_last + 1], no potential).
R3HF_HD void token_rewards_row(const float* s, const bool* mask, const float* logprob, const float* ref_logprob,
                               int64_t L, const RewardOptions& opt, float* out, const float* r = nullptr) {
  if (r == nullptr) r = s;
  int64_t first = -1;
  for (int64_t j = 0; j < L; ++j) {
    if (mask[j]) { first = j; break; }
  }
  const float phi_1 = opt.first_prompt ? s[0] : 0.f;
  int64_t next = -1;  // the next generated token after j, −1 when none
  for (int64_t j = L - 1; j >= 0; --j) {
    if (!mask[j]) {
      out[j] = 0.f;
      continue;
    }
    const float phi_in = (j == first) ? phi_1 : s[j];
    const float phi_out = next >= 0 ? s[next] : r[j + 1];
    const float dense = phi_out - phi_in;
    float v;
    if (opt.pure_dense) {
      v = dense;
    } else {
      const float sparse = next >= 0 ? 0.f : r[j + 1];
      v = opt.beta_c * dense + opt.one_minus_beta * sparse;
    }
    v = clamp_range(v, opt.reward_clip);
    if (opt.use_kl) v = v - opt.kl_coef * kl_estimate(logprob[j], ref_logprob[j], opt.kl_estimator, opt.kl_clamp);
    out[j] = v;
    next = j;
  }
}

// Which entries of s (see token_rewards_row) a row reads: need[k] for k in [0, L]. Lets the fused
// op project only the hidden states it uses.
R3HF_HD void needed_scores(const bool* mask, int64_t L, bool first_prompt, bool* need) {
  for (int64_t k = 0; k <= L; ++k) need[k] = false;
  int64_t last = -1;
  bool seen = false;
  for (int64_t j = 0; j < L; ++j) {
    if (!mask[j]) continue;
    if (seen) {
      need[j] = true;  // Φ of a later generated token: the score just before it
    } else if (first_prompt) {
      need[0] = true;  // Φ_1: the prompt-only score
    }
    seen = true;
    last = j;
  }
  if (last >= 0) need[last + 1] = true;
}

// GAE of one row, backwards: at a generated t, δ = r_t + γ·v' − V_t, a = δ + γλ·a, v' = V_t;
// masked positions carry v' and a unchanged and get 0. returns = adv + V where generated.
R3HF_HD void gae_row(const float* rewards, const float* values, const bool* mask, int64_t L, float bootstrap,
                     const GaeOptions& opt, float* adv, float* ret) {
  float next_value = bootstrap;
  float running = 0.f;
  for (int64_t t = L - 1; t >= 0; --t) {
    if (!mask[t]) {
      adv[t] = 0.f;
      ret[t] = 0.f;
      continue;
    }
    const float delta = (rewards[t] + opt.gamma * next_value) - values[t];
    running = delta + opt.gamma_lam * running;
    next_value = values[t];
    adv[t] = running;
    ret[t] = running + values[t];
  }
}

}  // namespace r3hf
