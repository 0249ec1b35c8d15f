// fp32-accumulated dot products of one hidden state with the reward head, for fp32/bf16/fp16/fp64
// hidden states. 16 independent accumulators let the compiler vectorise over D; they are summed in
// a fixed tree order so a row's score does not depend on threads. On x86-64 with GCC each function
// is also compiled for x86-64-v3 (AVX2/F16C) and picked at load time.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(R3HF_NO_CLONES)
#define R3HF_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define R3HF_CLONES
#endif

namespace r3hf {
namespace cpu {

constexpr int kLanes = 16;

inline float reduce_lanes(const float* acc) {
  float a[kLanes / 2];
  for (int k = 0; k < kLanes / 2; ++k) a[k] = acc[k] + acc[k + kLanes / 2];
  float b[kLanes / 4];
  for (int k = 0; k < kLanes / 4; ++k) b[k] = a[k] + a[k + kLanes / 4];
  return (b[0] + b[2]) + (b[1] + b[3]);
}

inline float bf16_bits_to_float(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// The loop every variant shares; `load` converts one element to fp32. Always inlined, so each
// cloned caller gets it compiled for its own target.
template <typename T, typename Load>
__attribute__((always_inline)) inline float dot_lanes(const T* x, const float* w, int64_t D, Load load) {
  float acc[kLanes] = {0.f};
  int64_t i = 0;
  for (; i + kLanes <= D; i += kLanes)
    for (int k = 0; k < kLanes; ++k) acc[k] += load(x[i + k]) * w[i + k];
  for (int k = 0; i < D; ++i, ++k) acc[k] += load(x[i]) * w[i];
  return reduce_lanes(acc);
}

R3HF_CLONES static float dot_f32(const float* x, const float* w, int64_t D) {
  return dot_lanes(x, w, D, [](float v) { return v; });
}

R3HF_CLONES static float dot_bf16(const uint16_t* x, const float* w, int64_t D) {
  return dot_lanes(x, w, D, [](uint16_t v) { return bf16_bits_to_float(v); });
}

R3HF_CLONES static float dot_f16(const c10::Half* x, const float* w, int64_t D) {
  return dot_lanes(x, w, D, [](c10::Half v) { return static_cast<float>(v); });
}

// fp64 hidden: the reference converts to fp32 first, so do the same per element.
static float dot_f64(const double* x, const float* w, int64_t D) {
  return dot_lanes(x, w, D, [](double v) { return static_cast<float>(v); });
}

inline float dot(const float* x, const float* w, int64_t D) { return dot_f32(x, w, D); }
inline float dot(const c10::BFloat16* x, const float* w, int64_t D) {
  return dot_bf16(reinterpret_cast<const uint16_t*>(x), w, D);
}
inline float dot(const c10::Half* x, const float* w, int64_t D) { return dot_f16(x, w, D); }
inline float dot(const double* x, const float* w, int64_t D) { return dot_f64(x, w, D); }

}  // namespace cpu
}  // namespace r3hf
