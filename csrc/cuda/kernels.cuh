// CUDA kernels of r3hf (no torch include: nvcc compiles them with the CUDA toolkit alone).
//
// - project_kernel: the reward-head projection, one warp per sequence position, 16-byte vector
//   loads of the hidden state, fp32 accumulation, a warp-shuffle reduction. Bandwidth-bound: every
//   hidden byte is read once. With a `need` list only the positions a row's rewards read are
//   projected (the fused op).
// - row_stats_kernel: first and last generated token of each row (block reductions).
// - rewards_gae_kernel: one block per row walks the row in tiles of kThreads * kItems positions,
//   from the end. The "next generated token" is a suffix-min scan and the GAE recurrence
//   a = δ + γλ·a is a scan of affine maps x -> A·x + b (A = γλ, b = δ at generated tokens; the
//   identity at masked ones), both as block-wide scans over per-thread chunks with the state of
//   later tiles carried in. No thread walks a whole row.
//
// Naming follows flash-linear-attention: i_ program ids, o_ offsets, m_ masks, p_ pointers,
// b_ block values.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../r3hf_math.h"

namespace r3hf {
namespace cuda {

constexpr int kWarp = 32;
constexpr int kThreads = 256;  // threads per block of the row kernel
constexpr int kItems = 8;      // positions per thread per tile
constexpr int kTile = kThreads * kItems;

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(double x) { return static_cast<float>(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// scores[b, k] for k in [0, K): hidden row (b, o_first[b] + k) · w (+ bias). need (optional, [B, K]
// bool) skips positions nobody reads (their score is written as 0). One warp per position.
template <typename T>
__global__ void project_kernel(const T* __restrict__ p_hidden, int64_t stride_b, int64_t stride_t,
                               const float* __restrict__ p_w, const float* __restrict__ p_bias, int64_t D,
                               const int64_t* __restrict__ o_first, const bool* __restrict__ m_need, int64_t B,
                               int64_t K, float* __restrict__ p_out) {
  const int64_t i_row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (i_row >= B * K) return;
  const int64_t i_b = i_row / K, i_k = i_row % K;
  if (m_need != nullptr && !m_need[i_row]) {
    if (lane == 0) p_out[i_row] = 0.f;
    return;
  }
  const int64_t t = (o_first != nullptr ? o_first[i_b] : 0) + i_k;
  const T* p_x = p_hidden + i_b * stride_b + t * stride_t;
  constexpr int kVec = 16 / sizeof(T);  // elements per 16-byte load
  float b_acc = 0.f;
  const bool aligned = (reinterpret_cast<uintptr_t>(p_x) % 16 == 0) && (D % kVec == 0);
  if (aligned) {
    const uint4* p_v = reinterpret_cast<const uint4*>(p_x);
    for (int64_t o_v = lane; o_v < D / kVec; o_v += kWarp) {
      uint4 raw = __ldg(p_v + o_v);  // read-only, streamed once
      const T* b_x = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int e = 0; e < kVec; ++e) b_acc += to_f32(b_x[e]) * p_w[o_v * kVec + e];
    }
  } else {
    for (int64_t o_d = lane; o_d < D; o_d += kWarp) b_acc += to_f32(p_x[o_d]) * p_w[o_d];
  }
  b_acc = warp_sum(b_acc);
  if (lane == 0) p_out[i_row] = p_bias != nullptr ? b_acc + p_bias[0] : b_acc;
}

// o_stats[b] = {first, last} generated token of row b (−1, −1 when none). One block per row.
__global__ void row_stats_kernel(const bool* __restrict__ m_mask, int64_t L, int64_t* __restrict__ o_stats) {
  __shared__ int64_t s_first[kThreads / kWarp], s_last[kThreads / kWarp];
  const int64_t i_b = blockIdx.x;
  int64_t b_first = INT64_MAX, b_last = -1;
  for (int64_t t = threadIdx.x; t < L; t += blockDim.x) {
    if (m_mask[i_b * L + t]) {
      b_first = min(b_first, t);
      b_last = max(b_last, t);
    }
  }
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) {
    b_first = min(b_first, __shfl_xor_sync(0xffffffffu, b_first, o));
    b_last = max(b_last, __shfl_xor_sync(0xffffffffu, b_last, o));
  }
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) {
    s_first[warp] = b_first;
    s_last[warp] = b_last;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x) / kWarp; ++w) {
      b_first = min(b_first, s_first[w]);
      b_last = max(b_last, s_last[w]);
    }
    o_stats[2 * i_b] = b_last >= 0 ? b_first : -1;
    o_stats[2 * i_b + 1] = b_last;
  }
}

// need[b, k], k in [0, L]: which s entries (s[k] = score at prompt_len − 1 + k) a row reads;
// mirrors r3hf::needed_scores with one thread per entry.
__global__ void need_kernel(const bool* __restrict__ m_mask, const int64_t* __restrict__ o_stats, int64_t B,
                            int64_t L, bool first_prompt, bool* __restrict__ m_need) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * (L + 1)) return;
  const int64_t i_b = i / (L + 1), k = i % (L + 1);
  const int64_t first = o_stats[2 * i_b], last = o_stats[2 * i_b + 1];
  bool need = false;
  if (last >= 0) {
    need = (k == last + 1) || (k == 0 && first_prompt) || (k < L && k > first && m_mask[i_b * L + k]);
  }
  m_need[i] = need;
}

// x -> A·x + b; compose(f, g) applies f first.
struct Affine {
  float A, b;
};
__device__ __forceinline__ Affine compose(Affine f, Affine g) { return {f.A * g.A, f.b * g.A + g.b}; }
__device__ __forceinline__ int64_t compose(int64_t f, int64_t g) { return min(f, g); }

template <typename T>
__device__ __forceinline__ T shfl_up(T v, int d);
template <>
__device__ __forceinline__ Affine shfl_up(Affine v, int d) {
  return {__shfl_up_sync(0xffffffffu, v.A, d), __shfl_up_sync(0xffffffffu, v.b, d)};
}
template <>
__device__ __forceinline__ int64_t shfl_up(int64_t v, int d) {
  return __shfl_up_sync(0xffffffffu, v, d);
}

// Block-wide exclusive scan in thread order with `compose`; *total gets the whole block's
// composition. All kThreads threads must call it. s_warp holds kThreads / kWarp values.
template <typename T>
__device__ T block_exclusive_scan(T v, T identity, T* s_warp, T* total) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  T incl = v;
#pragma unroll
  for (int d = 1; d < kWarp; d *= 2) {
    T other = shfl_up(incl, d);
    if (lane >= d) incl = compose(other, incl);
  }
  T excl = shfl_up(incl, 1);
  if (lane == 0) excl = identity;
  if (lane == kWarp - 1) s_warp[warp] = incl;
  __syncthreads();
  T prefix = identity;
  for (int w = 0; w < warp; ++w) prefix = compose(prefix, s_warp[w]);
  T all = identity;
  for (int w = 0; w < kThreads / kWarp; ++w) all = compose(all, s_warp[w]);
  __syncthreads();  // s_warp is reused by the next scan
  *total = all;
  return compose(prefix, excl);
}

// Rewards (from s, or given) and GAE of one row per block. Tiles are walked from the end of the
// row; in a tile, thread k owns reversed positions [k·kItems, (k+1)·kItems) so that thread order
// is the order of the backward recurrence.
struct RowArgs {
  // rewards source: s[b, k] = p_s[b * s_stride + s_offset[b] + k] (null p_s: rewards given)
  const float* p_s;
  int64_t s_stride;
  const int64_t* o_s_offset;  // per-row offset (prompt_len − 1 for scores, 0 for the fused buffer)
  // A separate potential (issue 24): p_s holds Φ' and p_r the scores (same layout), read only for
  // R after the last generated token. Null: R comes from p_s.
  const float* p_r;
  const int64_t* o_stats;     // [B, 2] first/last generated token
  const float* p_logprob;
  const float* p_ref;
  const float* p_rewards_in;  // used when p_s is null
  const float* p_values;      // null: no GAE
  const float* p_bootstrap;   // null: 0
  const bool* m_mask;
  int64_t L;
  RewardOptions ropt;
  GaeOptions gopt;
  float* p_rewards_out;  // null: not written
  float* p_adv;
  float* p_ret;
};

__global__ void __launch_bounds__(kThreads) rewards_gae_kernel(RowArgs args) {
  __shared__ Affine s_aff[kThreads / kWarp];
  __shared__ int64_t s_idx[kThreads / kWarp];
  const int64_t i_b = blockIdx.x, L = args.L;
  const bool* m_row = args.m_mask + i_b * L;
  const int64_t first = args.o_stats[2 * i_b];
  const float* p_srow = args.p_s ? args.p_s + i_b * args.s_stride + args.o_s_offset[i_b] : nullptr;
  const float* p_rrow = args.p_r ? args.p_r + i_b * args.s_stride + args.o_s_offset[i_b] : p_srow;
  const float boot = args.p_bootstrap ? args.p_bootstrap[i_b] : 0.f;
  int64_t b_next_carry = L;  // the first generated token after the current tile (L: none)
  float b_adv_carry = 0.f;   // the running advantage entering the current tile
  const int64_t n_tiles = (L + kTile - 1) / kTile;
  for (int64_t i_tile = 0; i_tile < n_tiles; ++i_tile) {
    const int64_t o_end = L - i_tile * kTile;  // positions [o_end − kTile, o_end), walked backwards
    // t of the thread's e-th item: o_end − 1 − (threadIdx.x · kItems + e)
    bool b_m[kItems];
    int64_t b_t[kItems];
    int64_t b_min = L;
#pragma unroll
    for (int e = 0; e < kItems; ++e) {
      b_t[e] = o_end - 1 - (static_cast<int64_t>(threadIdx.x) * kItems + e);
      b_m[e] = b_t[e] >= 0 && m_row[b_t[e]];
      if (b_m[e]) b_min = min(b_min, b_t[e]);
    }
    int64_t tile_min;
    int64_t b_next = compose(block_exclusive_scan<int64_t>(b_min, L, s_idx, &tile_min), b_next_carry);
    // Rewards and δ in reverse order inside the thread's chunk.
    float b_r[kItems], b_delta[kItems];
#pragma unroll
    for (int e = 0; e < kItems; ++e) {
      b_r[e] = 0.f;
      b_delta[e] = 0.f;
      if (!b_m[e]) continue;
      const int64_t t = b_t[e];
      float r;
      if (p_srow != nullptr) {
        const RewardOptions& o = args.ropt;
        const float phi_in = (t == first) ? (o.first_prompt ? p_srow[0] : 0.f) : p_srow[t];
        const float phi_out = b_next < L ? p_srow[b_next] : p_rrow[t + 1];
        const float dense = phi_out - phi_in;
        if (o.pure_dense) {
          r = dense;
        } else {
          const float sparse = b_next < L ? 0.f : p_rrow[t + 1];
          r = o.beta_c * dense + o.one_minus_beta * sparse;
        }
        r = clamp_range(r, o.reward_clip);
        if (o.use_kl)
          r = r - o.kl_coef * kl_estimate(args.p_logprob[i_b * L + t], args.p_ref[i_b * L + t], o.kl_estimator,
                                          o.kl_clamp);
      } else {
        r = args.p_rewards_in[i_b * L + t];
      }
      b_r[e] = r;
      if (args.p_values != nullptr) {
        const float next_value = b_next < L ? args.p_values[i_b * L + b_next] : boot;
        b_delta[e] = (r + args.gopt.gamma * next_value) - args.p_values[i_b * L + t];
      }
      b_next = t;
    }
    b_next_carry = compose(b_next_carry, tile_min);
    if (args.p_rewards_out != nullptr) {
#pragma unroll
      for (int e = 0; e < kItems; ++e)
        if (b_t[e] >= 0) args.p_rewards_out[i_b * L + b_t[e]] = b_r[e];
    }
    if (args.p_values == nullptr) continue;
    // GAE: compose the chunk's maps, scan them across the block, then replay the chunk.
    Affine b_chunk{1.f, 0.f};
#pragma unroll
    for (int e = 0; e < kItems; ++e)
      if (b_m[e]) b_chunk = compose(b_chunk, Affine{args.gopt.gamma_lam, b_delta[e]});
    Affine tile_map;
    const Affine b_prefix = block_exclusive_scan<Affine>(b_chunk, Affine{1.f, 0.f}, s_aff, &tile_map);
    float a = b_prefix.A * b_adv_carry + b_prefix.b;
#pragma unroll
    for (int e = 0; e < kItems; ++e) {
      if (b_t[e] < 0) continue;
      const int64_t t = b_t[e];
      if (b_m[e]) {
        a = b_delta[e] + args.gopt.gamma_lam * a;
        args.p_adv[i_b * L + t] = a;
        args.p_ret[i_b * L + t] = a + args.p_values[i_b * L + t];
      } else {
        args.p_adv[i_b * L + t] = 0.f;
        args.p_ret[i_b * L + t] = 0.f;
      }
    }
    b_adv_carry = tile_map.A * b_adv_carry + tile_map.b;
  }
}

__global__ void kl_kernel(const float* __restrict__ p_lp, const float* __restrict__ p_ref, int64_t n, int estimator,
                          Range clamp, float* __restrict__ p_out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) p_out[i] = kl_estimate(p_lp[i], p_ref[i], estimator, clamp);
}

}  // namespace cuda
}  // namespace r3hf
