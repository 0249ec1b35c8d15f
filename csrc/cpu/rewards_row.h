// token_rewards of one row on the CPU, shared by the padded (ops_cpu.cpp) and packed (packed_cpu.cpp)
// kernels: a vectorisable fast path for rows without holes, with the bits of token_rewards_row.
#pragma once

#include <cstdint>

#include "../r3hf_math.h"

namespace r3hf {
namespace cpu {

// token_rewards of a row whose generated tokens are one contiguous run [first, last] (the common
// case: no observation holes). Then Φ_out = s[j + 1] and Φ_in = s[j] (Φ_1 at first), so the row is
// a branch-free elementwise pass the compiler vectorises; the same operations in the same order as
// token_rewards_row, so the same bits. `s` points at scores[prompt_len − 1] and is only read at
// indices >= first + 1 >= 1 (and at 0 through Φ_1 with first="prompt", where prompt_len >= 1).
// With a separate potential, `s` is the row of Φ' and `r` that of the scores (same indexing), read
// only at last + 1 for R (token_rewards_row); null r: R = s[last + 1].
// Returns false (nothing written) for a row with holes.
inline bool contiguous_row_rewards(const float* s, const bool* mask, const float* lp, const float* ref, int64_t L,
                                   const RewardOptions& opt, float* out, const float* r = nullptr) {
  int64_t first = -1, last = -1, count = 0;
  for (int64_t j = 0; j < L; ++j) count += mask[j];
  if (count == 0) {
    for (int64_t j = 0; j < L; ++j) out[j] = 0.f;
    return true;
  }
  for (int64_t j = 0; j < L; ++j)
    if (mask[j]) { first = j; break; }
  last = first + count - 1;
  if (!mask[last]) return false;  // count generated tokens that do not form one run
  for (int64_t j = last + 1; j < L; ++j)
    if (mask[j]) return false;
  for (int64_t j = 0; j < first; ++j) out[j] = 0.f;
  for (int64_t j = last + 1; j < L; ++j) out[j] = 0.f;
  const float phi_1 = opt.first_prompt ? s[0] : 0.f;
  const float R = (r == nullptr ? s : r)[last + 1];
  // Tokens strictly inside the run read Φ only; first and last are written below.
  if (opt.pure_dense) {
    for (int64_t j = first + 1; j < last; ++j) out[j] = s[j + 1] - s[j];
  } else {
    for (int64_t j = first + 1; j < last; ++j) out[j] = opt.beta_c * (s[j + 1] - s[j]) + opt.one_minus_beta * 0.f;
  }
  {
    const float dense = (last == first ? R : s[first + 1]) - phi_1;
    const float sparse = last == first ? R : 0.f;
    out[first] = opt.pure_dense ? dense : opt.beta_c * dense + opt.one_minus_beta * sparse;
  }
  if (last > first) {
    const float dense = R - s[last];
    out[last] = opt.pure_dense ? dense : opt.beta_c * dense + opt.one_minus_beta * R;
  }
  if (opt.reward_clip.on)
    for (int64_t j = first; j <= last; ++j) out[j] = clamp_range(out[j], opt.reward_clip);
  if (opt.use_kl) {
    if (opt.kl_estimator == KL_K1 && !opt.kl_clamp.on) {
      for (int64_t j = first; j <= last; ++j) out[j] = out[j] - opt.kl_coef * (lp[j] - ref[j]);
    } else {
      for (int64_t j = first; j <= last; ++j)
        out[j] = out[j] - opt.kl_coef * kl_estimate(lp[j], ref[j], opt.kl_estimator, opt.kl_clamp);
    }
  }
  return true;
}

}  // namespace cpu
}  // namespace r3hf
