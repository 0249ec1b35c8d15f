// Per-row math of the group-advantage ops (reward_to_go, group_advantages,
// fused_reward_group_advantages), shared by the CPU code and any CUDA code.
//
// Plain C++17 without torch, like r3hf_math.h. Each step mirrors r3hf/reference (the spec)
// operation by operation: the reverse scan is `r_t + γ·G_{t+1}` in fp32, in that order.
#pragma once

#include <cstdint>

#include "r3hf_math.h"

namespace r3hf {

// How a masked position (a hole, e.g. a tool-output span) enters the reward-to-go:
// skip     — veRL's reinforce_plus_plus: the running return passes through unchanged;
// discount — OpenRLHF's get_cumulative_returns: rewards are masked to 0 and every position
//            discounts (running = 0 + γ·running).
// Both write 0 at masked positions.
enum Holes : int { HOLES_SKIP = 0, HOLES_DISCOUNT = 1 };

// Columns of the row pass's float64 statistics [B, kStats] (r3hf/_group_stats.py, STAT_*): the
// count of generated tokens, Σ m·r, Σ m·(r − mean r)², Σ m·G, Σ m·(G − mean G)².
enum RowStat : int { STAT_COUNT = 0, STAT_SUM_R = 1, STAT_M2_R = 2, STAT_SUM_G = 3, STAT_M2_G = 4 };
constexpr int kStats = 5;

// One reverse-scan step at position t; returns G_t (0 where masked) and updates `running`.
R3HF_HD float rtg_step(float r, bool m, float gamma, bool skip, float& running) {
  if (m) {
    running = r + gamma * running;
    return running;
  }
  if (!skip) running = 0.f + gamma * running;
  return 0.f;
}

// The masked reward-to-go of one row [L], backwards.
R3HF_HD void reward_to_go_row(const float* r, const bool* m, int64_t L, float gamma, bool skip, float* out) {
  float running = 0.f;
  for (int64_t t = L - 1; t >= 0; --t) out[t] = rtg_step(r[t], m[t], gamma, skip, running);
}

}  // namespace r3hf
