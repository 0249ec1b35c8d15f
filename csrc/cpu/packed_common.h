// What the packed CPU kernels share (csrc/cpu/packed_cpu.cpp, csrc/cpu/packed_group_cpu.cpp): the
// checks of cu_seqlens and the response region of a sequence (PACKED_CONTRACT.md / issue 16).
//
// A packed batch is one stream of T positions; sequence i holds [cu[i], cu[i+1]): its prompt, then
// its response, no padding. Its response region is [s_i, cu[i+1]) with s_i its first generated
// position (cu[i+1] when it has none); the padded row of sequence i is that region, with
// prompt_len_i = s_i − cu[i]. Kernels run one sequence per thread, in a fixed order, with the
// padded row functions on row pointers into the stream, so results are bitwise those of the padded
// kernels and do not depend on the thread count.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "cpu_common.h"

namespace r3hf {
namespace cpu {

// cu_seqlens (int32 or int64, [N + 1]) as contiguous int64, checked against the stream length T:
// N >= 1, cu[0] = 0, non-decreasing, cu[N] = T. r3hf._validate checks the same before a public
// call; these checks keep a direct call from reading outside the stream.
inline Tensor packed_offsets(const Tensor& cu_in, int64_t T) {
  check_cpu(cu_in, "cu_seqlens");
  TORCH_CHECK_VALUE(cu_in.scalar_type() == at::kInt || cu_in.scalar_type() == at::kLong,
                    "cu_seqlens must be an int32 or int64 tensor, got ", cu_in.scalar_type());
  TORCH_CHECK_VALUE(cu_in.dim() == 1 && cu_in.numel() >= 2, "cu_seqlens must be 1-D [N + 1] with N >= 1, got ",
                    cu_in.sizes());
  Tensor cu = as_long(cu_in);
  const int64_t* p = cu.data_ptr<int64_t>();
  const int64_t N = cu.numel() - 1;
  TORCH_CHECK_VALUE(p[0] == 0, "cu_seqlens[0] must be 0, got ", p[0]);
  for (int64_t i = 0; i < N; ++i)
    TORCH_CHECK_VALUE(p[i + 1] >= p[i], "cu_seqlens must be non-decreasing, got cu_seqlens[", i, "] = ", p[i],
                      " > cu_seqlens[", i + 1, "] = ", p[i + 1]);
  TORCH_CHECK_VALUE(p[N] == T, "cu_seqlens[-1] must equal the stream length T = ", T, ", got ", p[N]);
  return cu;
}

// A per-token tensor of the stream: [T] (any layout; read as contiguous fp32 or bool by the caller).
inline void check_stream(const Tensor& t, int64_t T, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == T, name, " must be [T] = [", T, "] in packed mode, got ",
                    t.sizes());
}

// GAE's bootstrap per sequence: None -> an undefined tensor (0 for every sequence), else fp32 [N].
inline Tensor packed_bootstrap(const c10::optional<Tensor>& bootstrap_in, int64_t N) {
  if (!bootstrap_in.has_value()) return Tensor();
  Tensor boot = f32(*bootstrap_in);
  TORCH_CHECK_VALUE(boot.numel() == N, "bootstrap must be [N] = [", N, "] (one per sequence), got ",
                    bootstrap_in->sizes());
  return boot;
}

// s_i: the first generated position of [c0, c1), or c1 when there is none.
inline int64_t first_generated(const bool* m, int64_t c0, int64_t c1) {
  const bool* p = std::find(m + c0, m + c1, true);
  return c0 + (p - (m + c0));
}

// first="prompt" reads Φ_1 at s_i − 1, which must be a prompt token of the same sequence (as
// prompt_len >= 1 in the padded op): O(N), since s_i = cu[i] exactly when mask[cu[i]] is set.
inline void check_first_prompt(const int64_t* cu, int64_t N, const bool* m, bool first_prompt) {
  if (!first_prompt) return;
  for (int64_t i = 0; i < N; ++i)
    TORCH_CHECK_VALUE(cu[i] == cu[i + 1] || !m[cu[i]], "first='prompt' needs a prompt token before the first "
                      "generated token of every sequence, but sequence ", i, " starts with a generated token at "
                      "stream position ", cu[i], " (use first='zero' for sequences without a prompt)");
}

// Sequences per parallel_for task, from the mean work of a sequence (see cpu::grain).
inline int64_t seq_grain(int64_t T, int64_t N, int64_t work_per_token) {
  return grain(std::max<int64_t>(1, T / std::max<int64_t>(1, N)) * std::max<int64_t>(1, work_per_token));
}

// Sequences [0, N) in chunks of `grain`, handed out in order to the threads as they free up:
// sequence lengths vary, so at::parallel_for's equal-count chunks would leave threads idle. A
// sequence is still computed whole by one thread, so no bit depends on which thread or how many.
template <typename F>
void parallel_seqs(int64_t N, int64_t grain, const F& f) {
  grain = std::max<int64_t>(1, grain);
  if (N <= grain || at::get_num_threads() == 1) {
    f(0, N);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    for (int64_t b; (b = next.fetch_add(grain)) < N;) f(b, std::min(N, b + grain));
  });
}

// hidden [T, D] (or [1, T, D]) as the [1, T, D] view Projection reads (strides kept, no copy).
inline Tensor packed_hidden(const Tensor& hidden) {
  TORCH_CHECK_VALUE(hidden.dim() == 2 || (hidden.dim() == 3 && hidden.size(0) == 1),
                    "hidden must be [T, D] or [1, T, D] in packed mode, got ", hidden.sizes());
  return hidden.dim() == 2 ? hidden.unsqueeze(0) : hidden;
}

}  // namespace cpu
}  // namespace r3hf
