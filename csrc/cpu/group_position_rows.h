// Row functions of the one-pass-per-group position kernels (group_position_affine.cpp, issue 21
// "Speed"): the common row, whose generated tokens are exactly its first n positions (trailing
// padding, no holes), has position p == token p, so its per-position sums are plain vertical adds
// and it needs no mask to find p. Rows with holes take group_rows.h's general functions
// (add_positions, position_apply). Every table cell still gets the same fp64 adds in the same
// (row) order as add_positions gives it, so the results are bitwise those of the three-op path.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "group_rows.h"

namespace r3hf {
namespace cpu {

// n when the row's generated tokens are exactly positions [0, n) (n = L for a full row, 0 for an
// all-masked row), -1 when the row has a hole. Two memchr (libc's vector code): ~L/32 cycles.
inline int64_t prefix_length(const bool* m, int64_t L) {
  static_assert(sizeof(bool) == 1, "a bool mask is one byte per position");
  const void* z = std::memchr(m, 0, static_cast<size_t>(L));
  if (z == nullptr) return L;
  const int64_t n = static_cast<const bool*>(z) - m;
  return std::memchr(m + n, 1, static_cast<size_t>(L - n)) == nullptr ? n : -1;
}

#ifdef R3HF_SCAN_AVX2
// The 32-byte-aligned middle of position_apply_prefix with streaming stores: the advantages are
// written once and not read again here, so they bypass the cache (no read of each line before its
// write, and rewards and mask stay cached; measured faster for every estimator, reinforce_pp_baseline's
// in-place whitening included). The caller issues stream_fence() before the output is read.
// -> the first t not written.
R3HF_AVX2 inline int64_t position_apply_prefix_avx2(const float* G, int64_t n, int64_t L, const float* shift,
                                                    const float* scale, float* out) {
  int64_t t = 0;
  for (; t < L && (reinterpret_cast<uintptr_t>(out + t) & 31) != 0; ++t) out[t] = t < n ? (G[t] - shift[t]) * scale[t] : 0.f;
  for (; t + 8 <= n; t += 8)
    _mm256_stream_ps(out + t, _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(G + t), _mm256_loadu_ps(shift + t)),
                                            _mm256_loadu_ps(scale + t)));
  for (; t < n; ++t) out[t] = (G[t] - shift[t]) * scale[t];
  for (; t < L && (reinterpret_cast<uintptr_t>(out + t) & 31) != 0; ++t) out[t] = 0.f;
  const __m256 zero = _mm256_setzero_ps();
  for (; t + 8 <= L; t += 8) _mm256_stream_ps(out + t, zero);
  return t;
}
#endif

// A = (G − shift[t])·scale[t] for t < n and 0 after, for a prefix row of length n: the same fp32
// operations as position_apply, without reading the mask.
inline void position_apply_prefix(const float* __restrict__ G, int64_t n, int64_t L, const float* __restrict__ shift,
                                  const float* __restrict__ scale, float* __restrict__ out) {
  int64_t t = 0;
#ifdef R3HF_SCAN_AVX2
  if (have_avx2()) t = position_apply_prefix_avx2(G, n, L, shift, scale, out);
#endif
  for (; t < n; ++t) out[t] = (G[t] - shift[t]) * scale[t];
  for (; t < L; ++t) out[t] = 0.f;
}

// Orders the streaming stores of position_apply_prefix before whatever reads the output next.
inline void stream_fence() {
#ifdef R3HF_SCAN_AVX2
  if (have_avx2()) _mm_sfence();
#endif
}

#ifdef R3HF_SCAN_AVX2
R3HF_AVX2 inline int64_t shift_scale_masked_avx2(float* x, const bool* m, int64_t L, float shift, float scale) {
  const __m256 sh = _mm256_set1_ps(shift), sc = _mm256_set1_ps(scale);
  int64_t t = 0;
  for (; t + 8 <= L; t += 8)
    _mm256_storeu_ps(x + t, _mm256_and_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + t), sh), sc), mask8(m + t)));
  return t;
}
#endif

// x = m ? (x − shift)·scale : 0 over one row, in place (reinforce_pp_baseline's whitening; GCC
// leaves the scalar form branchy, ~1 ns a position).
inline void shift_scale_masked(float* x, const bool* m, int64_t L, float shift, float scale) {
  int64_t t = 0;
#ifdef R3HF_SCAN_AVX2
  if (have_avx2()) t = shift_scale_masked_avx2(x, m, L, shift, scale);
#endif
  for (; t < L; ++t) x[t] = m[t] ? (x[t] - shift) * scale : 0.f;
}

#ifdef R3HF_SCAN_AVX2
// The reverse scan of kScanRows prefix rows of lengths n[k] (holes "skip"), fused with their
// per-position sums. Per 8 positions the rows are scanned in the transposed domain with
// scan_rows8_avx2<SCAN_G>'s fp32 operations, transposed back, stored to out[k] and added to
// sum[t..t+8) (G² to sq) row after row: the order add_positions adds them in. Because every masked
// lane of a prefix row lies after its last generated token, its running return is still +0 there,
// so (γ finite) r·0 + γ·(+0) = +0 is the value a masked step keeps anyway: the blend and the output
// mask of the general scan are not needed, and the masks come from n in the transposed domain (no
// mask load or transpose). With γ = 1 the γ· is dropped (1·x == x exactly). A masked lane holds
// +0.0, and adding +0.0 leaves a table cell unchanged (a cell is never −0.0: it starts at +0.0).
// Positions at or past the longest row are neither read nor written: the scan starts there.
// sum/sq must be zero (or hold earlier rows' sums) on [0, round_up(max n, 8)) ∩ [0, L).
template <bool UnitGamma>
R3HF_AVX2 void scan_prefix_rows8_sums_avx2(const float* const* r, const int64_t* n, int64_t L, float gamma,
                                           float* const* out, double* sum, double* sq) {
  int64_t nmax = 0;
  for (int k = 0; k < kScanRows; ++k) nmax = std::max(nmax, n[k]);
  float run[kScanRows];
  int32_t len[kScanRows];
  const int64_t L8 = L - L % 8;
  for (int k = 0; k < kScanRows; ++k) {  // the tail past the last whole run of 8, one row at a time
    run[k] = 0.f;
    len[k] = static_cast<int32_t>(n[k]);
    const int64_t e = std::min(L, n[k]);
    for (int64_t t = e - 1; t >= L8; --t) out[k][t] = rtg_step(r[k][t], true, gamma, true, run[k]);
    for (int64_t t = L8; t < e; ++t) {
      const double v = static_cast<double>(out[k][t]);
      sum[t] += v;
      if (sq != nullptr) sq[t] += v * v;
    }
  }
  __m256 running = _mm256_loadu_ps(run);
  const __m256 v_g = _mm256_set1_ps(gamma);
  const __m256i v_len = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(len));
  const int64_t start = std::min(L8, (nmax + 7) / 8 * 8);
  for (int64_t t0 = start - 8; t0 >= 0; t0 -= 8) {
    __m256 x[kScanRows];
    for (int k = 0; k < kScanRows; ++k) x[k] = _mm256_loadu_ps(r[k] + t0);
    transpose8(x);
    for (int j = kScanRows - 1; j >= 0; --j) {
      // lane k generated <=> t0 + j < n[k]
      const __m256 mk = _mm256_castsi256_ps(_mm256_cmpgt_epi32(v_len, _mm256_set1_epi32(static_cast<int32_t>(t0 + j))));
      const __m256 xj = _mm256_and_ps(x[j], mk);
      running = UnitGamma ? _mm256_add_ps(xj, running) : _mm256_add_ps(xj, _mm256_mul_ps(v_g, running));
      x[j] = running;
    }
    transpose8(x);
    __m256d s0 = _mm256_loadu_pd(sum + t0), s1 = _mm256_loadu_pd(sum + t0 + 4);
    __m256d q0 = _mm256_setzero_pd(), q1 = q0;
    if (sq != nullptr) q0 = _mm256_loadu_pd(sq + t0), q1 = _mm256_loadu_pd(sq + t0 + 4);
    for (int k = 0; k < kScanRows; ++k) {
      _mm256_storeu_ps(out[k] + t0, x[k]);
      const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(x[k]));
      const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(x[k], 1));
      s0 = _mm256_add_pd(s0, lo), s1 = _mm256_add_pd(s1, hi);
      if (sq != nullptr) q0 = _mm256_add_pd(q0, _mm256_mul_pd(lo, lo)), q1 = _mm256_add_pd(q1, _mm256_mul_pd(hi, hi));
    }
    _mm256_storeu_pd(sum + t0, s0), _mm256_storeu_pd(sum + t0 + 4, s1);
    if (sq != nullptr) _mm256_storeu_pd(sq + t0, q0), _mm256_storeu_pd(sq + t0 + 4, q1);
  }
}

// The fused scan above when it applies (AVX2, γ finite) -> true; false: the caller takes the
// general path.
inline bool scan_prefix_rows8_sums(const float* const* r, const int64_t* n, int64_t L, float gamma, float* const* out,
                                   double* sum, double* sq) {
  if (!have_avx2() || !std::isfinite(gamma)) return false;
  if (gamma == 1.f) {
    scan_prefix_rows8_sums_avx2<true>(r, n, L, gamma, out, sum, sq);
  } else {
    scan_prefix_rows8_sums_avx2<false>(r, n, L, gamma, out, sum, sq);
  }
  return true;
}
#endif

}  // namespace cpu
}  // namespace r3hf
