// What the CPU kernels share (csrc/cpu/ops_cpu.cpp, csrc/cpu/group_cpu.cpp): argument checks, the
// parallel_for grain and the reward-head projection over hidden states of any dtype and strides.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/Optional.h>

#include <algorithm>
#include <string>
#include <vector>

#include "../op_args.h"
#include "dot.h"

namespace r3hf {
namespace cpu {

using at::Tensor;

inline Tensor as_long(const Tensor& t) { return t.to(at::kLong).contiguous(); }

// `scale` of the group estimators (r3hf/_group_stats.py SCALES), parsed once for the row and position ops.
enum class GroupScale { kGroup, kBatch, kNone };

inline GroupScale parse_group_scale(c10::string_view name) {
  if (name == "group") return GroupScale::kGroup;
  if (name == "batch") return GroupScale::kBatch;
  if (name == "none") return GroupScale::kNone;
  TORCH_CHECK_VALUE(false, "scale must be one of ['group', 'batch', 'none'], got '", std::string(name), "'");
  return GroupScale::kGroup;
}

inline void check_cpu(const Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be a CPU tensor for the CPU kernel, got ", t.device());
}

// Rows per parallel_for task: about 2^18 element-steps per task, so that small batches stay on one
// thread (an OpenMP region costs more than a [64, 1024] GAE, and far more on a loaded machine);
// any grain gives the same bits because a row is never split.
inline int64_t grain(int64_t work_per_row) { return std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, work_per_row)); }

// The reward head as fp32 [D] and the hidden states as they are (any strides: a hidden state
// strided over D is gathered into a D-sized per-thread buffer, never copied as a whole tensor).
struct Projection {
  Tensor hidden;
  Tensor weight;
  float bias = 0.f;
  bool has_bias = false;
  int64_t D = 0;

  Projection(const Tensor& h, const Tensor& w, const c10::optional<Tensor>& b) : hidden(h) {
    TORCH_CHECK_VALUE(h.dim() == 3, "hidden must be [B, S, D], got ", h.sizes());
    D = h.size(2);
    TORCH_CHECK_VALUE(w.numel() == D, "weight must have D = ", D, " elements, got ", w.sizes());
    weight = f32(w.reshape({D}));
    if (b.has_value()) {
      TORCH_CHECK_VALUE(b->numel() == 1, "bias must be a [1] tensor, got ", b->sizes());
      has_bias = true;
      bias = b->to(at::kFloat).item<float>();
    }
  }

  // hidden[b, t, :] · weight (+ bias). The gathered path converts to fp32 first and then runs the
  // same lanes in the same order, so it gives the same bits as the unit-stride path.
  template <typename scalar_t>
  float score(const scalar_t* base, int64_t b, int64_t t) const {
    const scalar_t* x = base + b * hidden.stride(0) + t * hidden.stride(1);
    const int64_t sd = hidden.stride(2);
    float s;
    if (sd == 1 || D == 1) {
      s = cpu::dot(x, weight.data_ptr<float>(), D);
    } else {
      thread_local std::vector<float> row;
      row.resize(D);
      for (int64_t d = 0; d < D; ++d) row[d] = static_cast<float>(x[d * sd]);
      s = cpu::dot(row.data(), weight.data_ptr<float>(), D);
    }
    return has_bias ? s + bias : s;
  }
};

// The reward head and an optional potential head (issue 24) on the same hidden states, for the
// fused ops. A row reads R only at s[last + 1] (last = its last generated token) and Φ at every
// other entry it needs (r3hf::needed_scores), so with a potential head s holds Φ' everywhere but
// there: each needed hidden row is read once, with the one head its entry uses, and the row math
// (token_rewards_row) is unchanged. Without a potential head, s is the reward head's scores.
struct Heads {
  const Projection& reward;
  c10::optional<Projection> potential;

  Heads(const Projection& r, const c10::optional<Tensor>& potential_weight,
        const c10::optional<Tensor>& potential_bias)
      : reward(r) {
    TORCH_CHECK_VALUE(potential_weight.has_value() || !potential_bias.has_value(),
                      "potential_bias is set but potential_weight is None");
    if (potential_weight.has_value()) potential.emplace(r.hidden, *potential_weight, potential_bias);
  }

  // s[k] = head(hidden[b, t0 + k]) where need[k], else 0, for k in [0, L]; mask: the row's [L].
  template <typename scalar_t>
  void fill(const scalar_t* base, int64_t b, int64_t t0, const bool* mask, const bool* need, int64_t L,
            float* s) const {
    if (!potential.has_value()) {
      for (int64_t k = 0; k <= L; ++k) s[k] = need[k] ? reward.score(base, b, t0 + k) : 0.f;
      return;
    }
    int64_t r_k = -1;  // s index of R: after the last generated token (none in an empty row)
    for (int64_t j = L - 1; j >= 0; --j)
      if (mask[j]) { r_k = j + 1; break; }
    for (int64_t k = 0; k <= L; ++k)
      s[k] = need[k] ? (k == r_k ? reward : *potential).score(base, b, t0 + k) : 0.f;
  }
};

#define R3HF_DISPATCH_HIDDEN(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// s[k] = scores[b, prompt_len − 1 + k] for k in [0, L] (0 where that index is −1).
inline void load_row_scores(const float* p_scores, int64_t S, int64_t p, int64_t L, float* s) {
  for (int64_t k = 0; k <= L; ++k) {
    const int64_t t = p - 1 + k;
    s[k] = (t >= 0 && t < S) ? p_scores[t] : 0.f;
  }
}

inline void check_prompt_len(int64_t p, int64_t L, int64_t S, bool first_prompt) {
  TORCH_CHECK_VALUE(p >= (first_prompt ? 1 : 0) && p + L <= S, "prompt_len ", p, " out of range for S = ", S,
                    ", L = ", L);
}

}  // namespace cpu
}  // namespace r3hf
