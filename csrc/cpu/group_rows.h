// Row functions of the group-advantage ops on the CPU, shared by the padded (group_cpu.cpp) and
// packed (packed_group_cpu.cpp) kernels: the reverse scan, the row moments and the finish pass, each
// over K rows of L contiguous positions. Each row goes through the same fp32/double operations in the
// same order whatever K is, so a row's bits depend only on its own data.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "../group_math.h"
#include "../r3hf_math.h"
#include "dot.h"  // R3HF_CLONES

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

namespace r3hf {
namespace cpu {

// --- the reverse scan, kScanRows rows as one vector ---------------------------------------------
// A reverse scan is a chain of dependent fp32 ops per row, so one row at a time is latency-bound,
// and interleaving rows that are L apart position by position (L a power of two) puts them all in
// one L1 set (8 rows of L = 4096 ran 12x slower than 4). With AVX2, 8 positions of each of 8 rows
// are loaded as 8 vectors, transposed in registers to [position][row], scanned backwards with one
// 8-wide op per step across the rows, transposed back and stored: whole 32-byte runs per row, 8
// independent chains per vector op. Each row still goes through exactly rtg_step's fp32 operations
// (holes "skip") in the same order, so its bits are those of a one-row scan. Without AVX2 the rows
// are interleaved 4 at a time as before.
constexpr int kScanRows = 8;

// What a scan writes: G (SCAN_G); m·(G − shift)·scale (SCAN_FINISH, finish_step<false>); or the
// reward-to-go of m·(r − shift)·scale (SCAN_ON_REWARDS, finish_step<true>).
enum ScanMode : int { SCAN_G = 0, SCAN_FINISH = 1, SCAN_ON_REWARDS = 2 };

// One scalar step of mode `mode` (the row tails and the fallback), exactly finish_step's operations.
inline float scan_step(int mode, float r, bool mk, float sh, float sc, float gamma, float& running) {
  if (mode == SCAN_ON_REWARDS) return rtg_step(mk ? (r - sh) * sc : 0.f, mk, gamma, true, running);
  const float g = rtg_step(mk ? r : 0.f, mk, gamma, true, running);
  if (mode == SCAN_FINISH) return mk ? (g - sh) * sc : 0.f;
  return g;
}

// The fallback: 4 rows interleaved position by position.
inline void scan_rows4(const float* const* r, const bool* const* m, int64_t L, float gamma, int mode,
                       const float* sh, const float* sc, float* const* out, int n) {
  float running[4] = {0.f, 0.f, 0.f, 0.f};
  for (int64_t t = L - 1; t >= 0; --t)
    for (int k = 0; k < n; ++k) out[k][t] = scan_step(mode, r[k][t], m[k][t], sh[k], sc[k], gamma, running[k]);
}

#if defined(__GNUC__) && defined(__x86_64__) && !defined(R3HF_NO_CLONES)
#define R3HF_SCAN_AVX2 1
#define R3HF_AVX2 __attribute__((target("avx2")))

// always_inline: called out of line, the 8 vectors go through memory (the finish ran ~20 % slower
// once the row-pass code grew and GCC stopped inlining it).
R3HF_AVX2 __attribute__((always_inline)) inline void transpose8(__m256* v) {
  const __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
  const __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
  const __m256 t4 = _mm256_unpacklo_ps(v[4], v[5]), t5 = _mm256_unpackhi_ps(v[4], v[5]);
  const __m256 t6 = _mm256_unpacklo_ps(v[6], v[7]), t7 = _mm256_unpackhi_ps(v[6], v[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  v[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  v[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  v[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  v[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  v[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  v[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  v[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  v[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// 8 positions' mask as all-ones / zero lanes.
R3HF_AVX2 __attribute__((always_inline)) inline __m256 mask8(const bool* m) {
  const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(m)));
  return _mm256_castsi256_ps(_mm256_cmpgt_epi32(b, _mm256_setzero_si256()));
}

// Positions t0..t0+7 of 8 rows, transposed to [position][row]: rewards into x, mask lanes into mk.
R3HF_AVX2 __attribute__((always_inline)) inline void load_rows8(const float* const* r, const bool* const* m, int64_t t0,
                                                                __m256* x, __m256* mk) {
  for (int k = 0; k < 8; ++k) x[k] = _mm256_loadu_ps(r[k] + t0), mk[k] = mask8(m[k] + t0);
  transpose8(x);
  transpose8(mk);
}

template <int Mode>
R3HF_AVX2 void scan_rows8_avx2(const float* const* r, const bool* const* m, int64_t L, float gamma,
                               const float* shift, const float* scale, float* const* out) {
  float run[kScanRows], sh[kScanRows], sc[kScanRows];
  for (int k = 0; k < kScanRows; ++k) run[k] = 0.f, sh[k] = shift ? shift[k] : 0.f, sc[k] = scale ? scale[k] : 1.f;
  const int64_t L8 = L - L % 8;
  for (int k = 0; k < kScanRows; ++k)  // the tail past the last whole run of 8, one row at a time
    for (int64_t t = L - 1; t >= L8; --t) out[k][t] = scan_step(Mode, r[k][t], m[k][t], sh[k], sc[k], gamma, run[k]);
  __m256 running = _mm256_loadu_ps(run);
  const __m256 v_sh = _mm256_loadu_ps(sh), v_sc = _mm256_loadu_ps(sc), v_g = _mm256_set1_ps(gamma);
  for (int64_t t0 = L8 - 8; t0 >= 0; t0 -= 8) {
    __m256 x[kScanRows], mk[kScanRows];
    load_rows8(r, m, t0, x, mk);
    for (int j = kScanRows - 1; j >= 0; --j) {
      __m256 xj = x[j];
      if (Mode == SCAN_ON_REWARDS) xj = _mm256_mul_ps(_mm256_sub_ps(xj, v_sh), v_sc);
      xj = _mm256_and_ps(xj, mk[j]);
      const __m256 nr = _mm256_add_ps(xj, _mm256_mul_ps(v_g, running));
      running = _mm256_blendv_ps(running, nr, mk[j]);
      if (Mode == SCAN_FINISH) {
        x[j] = _mm256_and_ps(_mm256_mul_ps(_mm256_sub_ps(nr, v_sh), v_sc), mk[j]);
      } else {
        x[j] = _mm256_and_ps(nr, mk[j]);
      }
    }
    transpose8(x);
    for (int k = 0; k < kScanRows; ++k) _mm256_storeu_ps(out[k] + t0, x[k]);
  }
}
#endif

inline bool have_avx2() {
#ifdef R3HF_SCAN_AVX2
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
#else
  return false;
#endif
}

// kScanRows rows r[k], m[k] [L] -> out[k] [L]; shift/scale [kScanRows] (read unless SCAN_G).
inline void scan_rows8(const float* const* r, const bool* const* m, int64_t L, float gamma, int mode,
                       const float* shift, const float* scale, float* const* out) {
#ifdef R3HF_SCAN_AVX2
  if (have_avx2()) {
    if (mode == SCAN_G) return scan_rows8_avx2<SCAN_G>(r, m, L, gamma, shift, scale, out);
    if (mode == SCAN_FINISH) return scan_rows8_avx2<SCAN_FINISH>(r, m, L, gamma, shift, scale, out);
    return scan_rows8_avx2<SCAN_ON_REWARDS>(r, m, L, gamma, shift, scale, out);
  }
#endif
  float sh[kScanRows], sc[kScanRows];
  for (int k = 0; k < kScanRows; ++k) sh[k] = shift ? shift[k] : 0.f, sc[k] = scale ? scale[k] : 1.f;
  scan_rows4(r, m, L, gamma, mode, sh, sc, out, 4);
  scan_rows4(r + 4, m + 4, L, gamma, mode, sh + 4, sc + 4, out + 4, 4);
}

// kScanRows adjacent rows (row stride L) of rewards/mask/out.
inline void scan_rows8_adjacent(const float* r, const bool* m, int64_t L, float gamma, int mode, const float* shift,
                                const float* scale, float* out) {
  const float* pr[kScanRows];
  const bool* pm[kScanRows];
  float* po[kScanRows];
  for (int k = 0; k < kScanRows; ++k) pr[k] = r + k * L, pm[k] = m + k * L, po[k] = out + k * L;
  scan_rows8(pr, pm, L, gamma, mode, shift, scale, po);
}

template <int K>
void rtg_block(const float* r, const bool* m, int64_t L, float gamma, bool skip, float* out) {
  if constexpr (K == kScanRows) {
    if (skip) return scan_rows8_adjacent(r, m, L, gamma, SCAN_G, nullptr, nullptr, out);
    constexpr int kHalf = kScanRows / 2;  // holes "discount": two interleaved halves
    rtg_block<kHalf>(r, m, L, gamma, skip, out);
    return rtg_block<kHalf>(r + kHalf * L, m + kHalf * L, L, gamma, skip, out + kHalf * L);
  }
  float running[K];
  for (int k = 0; k < K; ++k) running[k] = 0.f;
  for (int64_t t = L - 1; t >= 0; --t) {
    for (int k = 0; k < K; ++k) {
      const int64_t i = k * L + t;
      out[i] = rtg_step(r[i], m[i], gamma, skip, running[k]);
    }
  }
}

// Row moments in double over kMomentLanes fixed lanes (lane = t mod kMomentLanes): vectorised over
// t, and the lane sums are added in a fixed order, so the bits do not depend on threads. 16 lanes,
// four 4-double accumulators, so the adds of consecutive iterations do not wait on each other (8
// lanes in two accumulators were bound by the add latency). Counts are exact integers in any order.
constexpr int kMomentLanes = 16;

inline double lane_total(const double* acc) {
  double total = 0.0;
  for (int l = 0; l < kMomentLanes; ++l) total += acc[l];
  return total;
}

#ifdef R3HF_SCAN_AVX2
// The AVX2 forms of masked_sum / masked_sum_sq below: lanes 0-15 in four 4-double vectors, each
// lane adding the same values in the same order as the scalar loop (GCC compiles that loop to
// branchy scalar code, ~10x slower than a plain sum).

// Lanes 0-15 of Σ m·x into acc_s (and of Σ m·(x − c)² into acc_q when Sq), the generated count into
// n; -> the first position not covered (a multiple of kMomentLanes).
template <bool Sq>
R3HF_AVX2 inline int64_t masked_lanes_avx2(const float* x, const bool* m, int64_t L, float c, int64_t& n,
                                           double* acc_s, double* acc_q) {
  __m256d s[4], q[4];
  for (int i = 0; i < 4; ++i) s[i] = _mm256_setzero_pd(), q[i] = s[i];
  const __m256 v_c = _mm256_set1_ps(c);
  int64_t t = 0, count = 0;
  for (; t + kMomentLanes <= L; t += kMomentLanes) {
    for (int h = 0; h < 2; ++h) {
      const __m256 mk = mask8(m + t + 8 * h);
      count += __builtin_popcount(static_cast<unsigned>(_mm256_movemask_ps(mk)));
      const __m256 v = _mm256_and_ps(_mm256_loadu_ps(x + t + 8 * h), mk);
      const __m256d v0 = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), v1 = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
      s[2 * h] = _mm256_add_pd(s[2 * h], v0), s[2 * h + 1] = _mm256_add_pd(s[2 * h + 1], v1);
      if (Sq) {  // masked lanes: 0 − 0, so they add +0 as the scalar loop does
        const __m256 cm = _mm256_and_ps(v_c, mk);
        const __m256d d0 = _mm256_sub_pd(v0, _mm256_cvtps_pd(_mm256_castps256_ps128(cm)));
        const __m256d d1 = _mm256_sub_pd(v1, _mm256_cvtps_pd(_mm256_extractf128_ps(cm, 1)));
        q[2 * h] = _mm256_add_pd(q[2 * h], _mm256_mul_pd(d0, d0));
        q[2 * h + 1] = _mm256_add_pd(q[2 * h + 1], _mm256_mul_pd(d1, d1));
      }
    }
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_pd(acc_s + 4 * i, s[i]);
    if (Sq) _mm256_storeu_pd(acc_q + 4 * i, q[i]);
  }
  n = count;
  return t;
}
#endif

// (Σ m, Σ m·x) of one row. (R3HF_CLONES, from dot.h: also compiled for AVX2, picked at load time.)
R3HF_CLONES static void masked_sum(const float* x, const bool* m, int64_t L, double& count, double& sum) {
  double acc_s[kMomentLanes] = {0.0};
  int64_t t = 0, n = 0;
#ifdef R3HF_SCAN_AVX2
  if (have_avx2()) t = masked_lanes_avx2<false>(x, m, L, 0.f, n, acc_s, nullptr);
#endif
  for (int l = 0; t < L; ++t, l = (l + 1) % kMomentLanes) {
    acc_s[l] += static_cast<double>(m[t] ? x[t] : 0.f);
    n += m[t] ? 1 : 0;
  }
  count = static_cast<double>(n);
  sum = lane_total(acc_s);
}

// --- one-pass M2 around a per-row shift ---------------------------------------------------------
// M2 = Σ m·(x − c)² − (Σ m·x − n·c)²/n with the shift c one of the row's own values (its value at
// the last generated position): then n·(mean − c)² <= n·M2, so Σ m·(x − c)² <= (n + 1)·M2 and the
// subtraction loses at most log2(n + 1) of double's 53 bits. One pass instead of a sum pass and a
// pass around the mean; the sum itself is accumulated as before (same bits as masked_sum).

// x at the row's last generated position, 0 for an all-masked row (trailing padding skipped 8 at a time).
inline float row_shift(const float* x, const bool* m, int64_t L) {
  int64_t t = L;
  for (uint64_t w; t >= 8; t -= 8) {
    __builtin_memcpy(&w, m + t - 8, 8);
    if (w != 0) break;
  }
  for (--t; t >= 0; --t)
    if (m[t]) return x[t];
  return 0.f;
}

inline double shifted_m2(double n, double sum, double sq, float c) {
  if (n <= 0) return 0.0;
  const double d = sum - n * static_cast<double>(c);
  return std::max(0.0, sq - d * d / n);
}

// (Σ m, Σ m·x, Σ m·(x − c)²) of one row in one pass (count and sum: masked_sum's lanes and bits).
R3HF_CLONES static void masked_sum_sq(const float* x, const bool* m, int64_t L, float c, double& count, double& sum,
                                      double& sq) {
  double acc_s[kMomentLanes] = {0.0}, acc_q[kMomentLanes] = {0.0};
  int64_t t = 0, n = 0;
#ifdef R3HF_SCAN_AVX2
  if (have_avx2()) t = masked_lanes_avx2<true>(x, m, L, c, n, acc_s, acc_q);
#endif
  for (int l = 0; t < L; ++t, l = (l + 1) % kMomentLanes) {
    const bool mk = m[t];
    const double v = static_cast<double>(mk ? x[t] : 0.f), d = v - static_cast<double>(mk ? c : 0.f);
    acc_s[l] += v;
    acc_q[l] += d * d;
    n += mk ? 1 : 0;
  }
  count = static_cast<double>(n);
  sum = lane_total(acc_s);
  sq = lane_total(acc_q);
}

// --- the reverse scan reduced on the fly (reinforce_pp's SUM_G, M2_G without writing G) ---------
// Each row: rtg_step's fp32 scan (holes "skip", the finish's bits), and at each generated position,
// t descending, sum += G and sq += (G − c)² in double. c = the row's reward at its last generated
// position (= G there). The vector form adds +0 at masked positions (sum and sq are never −0), so
// a row's results are the same bits in an 8-row block or alone.
inline void scan_moments_row(const float* r, const bool* m, int64_t L, float gamma, float c, double& sum,
                             double& sq) {
  float running = 0.f;
  double s = 0.0, q = 0.0;
  const double cd = c;
  for (int64_t t = L - 1; t >= 0; --t) {
    const float g = rtg_step(m[t] ? r[t] : 0.f, m[t], gamma, true, running);
    if (!m[t]) continue;
    const double d = static_cast<double>(g) - cd;
    s += static_cast<double>(g);
    q += d * d;
  }
  sum = s, sq = q;
}

#ifdef R3HF_SCAN_AVX2
R3HF_AVX2 inline void scan_moments8_avx2(const float* const* r, const bool* const* m, int64_t L, float gamma,
                                  const float* c, double* sum, double* sq) {
  float run[kScanRows];
  const int64_t L8 = L - L % 8;
  for (int k = 0; k < kScanRows; ++k) {  // the tail past the last whole run of 8, as scan_moments_row
    run[k] = 0.f, sum[k] = 0.0, sq[k] = 0.0;
    for (int64_t t = L - 1; t >= L8; --t) {
      const float g = rtg_step(m[k][t] ? r[k][t] : 0.f, m[k][t], gamma, true, run[k]);
      if (!m[k][t]) continue;
      const double d = static_cast<double>(g) - static_cast<double>(c[k]);
      sum[k] += static_cast<double>(g);
      sq[k] += d * d;
    }
  }
  __m256 running = _mm256_loadu_ps(run);
  const __m256 v_g = _mm256_set1_ps(gamma), v_c = _mm256_loadu_ps(c);
  __m256d s0 = _mm256_loadu_pd(sum), s1 = _mm256_loadu_pd(sum + 4), q0 = _mm256_loadu_pd(sq),
          q1 = _mm256_loadu_pd(sq + 4);
  for (int64_t t0 = L8 - 8; t0 >= 0; t0 -= 8) {
    __m256 x[kScanRows], mk[kScanRows];
    load_rows8(r, m, t0, x, mk);
    for (int j = kScanRows - 1; j >= 0; --j) {
      const __m256 nr = _mm256_add_ps(_mm256_and_ps(x[j], mk[j]), _mm256_mul_ps(v_g, running));
      running = _mm256_blendv_ps(running, nr, mk[j]);
      const __m256 gv = _mm256_and_ps(nr, mk[j]), cv = _mm256_and_ps(v_c, mk[j]);
      const __m256d g0 = _mm256_cvtps_pd(_mm256_castps256_ps128(gv)), g1 = _mm256_cvtps_pd(_mm256_extractf128_ps(gv, 1));
      const __m256d d0 = _mm256_sub_pd(g0, _mm256_cvtps_pd(_mm256_castps256_ps128(cv)));
      const __m256d d1 = _mm256_sub_pd(g1, _mm256_cvtps_pd(_mm256_extractf128_ps(cv, 1)));
      s0 = _mm256_add_pd(s0, g0), s1 = _mm256_add_pd(s1, g1);
      q0 = _mm256_add_pd(q0, _mm256_mul_pd(d0, d0)), q1 = _mm256_add_pd(q1, _mm256_mul_pd(d1, d1));
    }
  }
  _mm256_storeu_pd(sum, s0), _mm256_storeu_pd(sum + 4, s1);
  _mm256_storeu_pd(sq, q0), _mm256_storeu_pd(sq + 4, q1);
}
#endif

// kScanRows rows r[k], m[k] [L], shifts c [kScanRows] -> sum, sq [kScanRows].
inline void scan_moments8(const float* const* r, const bool* const* m, int64_t L, float gamma, const float* c,
                          double* sum, double* sq) {
#ifdef R3HF_SCAN_AVX2
  if (have_avx2()) return scan_moments8_avx2(r, m, L, gamma, c, sum, sq);
#endif
  for (int k = 0; k < kScanRows; ++k) scan_moments_row(r[k], m[k], L, gamma, c[k], sum[k], sq[k]);
}

// Which statistics a row pass computes. The contract's five columns are all computed by default;
// group_advantages asks only for those its estimator reads (grpo and rloo need neither the scan
// nor an M2), and a column not computed is NaN, so a reader that wrongly used it would see it.
struct RowPassColumns {
  bool reward_m2 = true;      // STAT_M2_R
  bool returns_stats = true;  // STAT_SUM_G, STAT_M2_G (needs the reverse scan)
};

// COUNT, SUM_R and (cols.reward_m2) M2_R of one row, in double; M2_R is NaN when not asked for.
inline void reward_stats(const float* x, const bool* mk, int64_t L, RowPassColumns cols, double* s) {
  double n, sum;
  if (cols.reward_m2) {
    const float c = row_shift(x, mk, L);
    double sq;
    masked_sum_sq(x, mk, L, c, n, sum, sq);
    s[STAT_M2_R] = shifted_m2(n, sum, sq, c);
  } else {
    masked_sum(x, mk, L, n, sum);
    s[STAT_M2_R] = std::numeric_limits<double>::quiet_NaN();
  }
  s[STAT_COUNT] = n;
  s[STAT_SUM_R] = sum;
}

// The statistics [COUNT, SUM_R, M2_R, SUM_G, M2_G] of one row from its rewards x [L] and, when
// cols.returns_stats, its scan G [L] (the packed row pass's scratch), each in one pass.
inline void row_stats(const float* x, const bool* mk, int64_t L, const float* G, RowPassColumns cols, double* s) {
  reward_stats(x, mk, L, cols, s);
  if (cols.returns_stats) {
    const float c = row_shift(G, mk, L);
    double n_g, sum_g, sq_g;
    masked_sum_sq(G, mk, L, c, n_g, sum_g, sq_g);
    s[STAT_SUM_G] = sum_g;
    s[STAT_M2_G] = shifted_m2(n_g, sum_g, sq_g, c);
  } else {
    s[STAT_SUM_G] = std::numeric_limits<double>::quiet_NaN();
    s[STAT_M2_G] = std::numeric_limits<double>::quiet_NaN();
  }
}

// The statistics of K adjacent rows (row stride L). SUM_G and M2_G come from the scan itself
// (scan_moments8 / scan_moments_row): G is never written, and the finish recomputes it with the
// same fp32 operations. The rewards are then read again for COUNT/SUM_R(/M2_R), K rows that the
// scan has just brought into cache. (The last argument, once the scan's scratch, is unused.)
template <int K>
void row_pass_block(const float* r, const bool* m, int64_t L, float gamma, RowPassColumns cols, float* /*unused*/,
                    double* stats) {
  float c[K] = {};
  double sum_g[K] = {}, sq_g[K] = {};
  if (cols.returns_stats) {
    for (int k = 0; k < K; ++k) c[k] = row_shift(r + k * L, m + k * L, L);
    if constexpr (K == kScanRows) {
      const float* pr[K];
      const bool* pm[K];
      for (int k = 0; k < K; ++k) pr[k] = r + k * L, pm[k] = m + k * L;
      scan_moments8(pr, pm, L, gamma, c, sum_g, sq_g);
    } else {
      for (int k = 0; k < K; ++k) scan_moments_row(r + k * L, m + k * L, L, gamma, c[k], sum_g[k], sq_g[k]);
    }
  }
  for (int k = 0; k < K; ++k) {
    double* s = stats + k * kStats;
    reward_stats(r + k * L, m + k * L, L, cols, s);
    s[STAT_SUM_G] = cols.returns_stats ? sum_g[k] : std::numeric_limits<double>::quiet_NaN();
    s[STAT_M2_G] = cols.returns_stats ? shifted_m2(s[STAT_COUNT], sum_g[k], sq_g[k], c[k])
                                      : std::numeric_limits<double>::quiet_NaN();
  }
}

// K rows of advantages, one reverse scan (holes="skip"):
//   on_rewards false: G = reward_to_go(r) recomputed (the row pass's bits), A = m·(G − shift)·scale;
//   on_rewards true:  A = reward_to_go(m·(r − shift)·scale).
template <bool OnRewards>
inline float finish_step(float r, bool mk, float sh, float sc, float gamma, float& running) {
  if (OnRewards) {
    const float x = mk ? (r - sh) * sc : 0.f;
    return rtg_step(x, mk, gamma, true, running);
  }
  const float g = rtg_step(mk ? r : 0.f, mk, gamma, true, running);
  return mk ? (g - sh) * sc : 0.f;
}

template <int K>
void finish_block(const float* r, const bool* m, int64_t L, const float* shift, const float* scale, float gamma,
                  bool on_rewards, float* out) {
  if constexpr (K == kScanRows) {
    return scan_rows8_adjacent(r, m, L, gamma, on_rewards ? SCAN_ON_REWARDS : SCAN_FINISH, shift, scale, out);
  }
  float running[K], sh[K], sc[K];
  for (int k = 0; k < K; ++k) running[k] = 0.f, sh[k] = shift[k], sc[k] = scale[k];
  if (on_rewards) {
    for (int64_t t = L - 1; t >= 0; --t) {
      for (int k = 0; k < K; ++k) {
        const int64_t i = k * L + t;
        out[i] = finish_step<true>(r[i], m[i], sh[k], sc[k], gamma, running[k]);
      }
    }
    return;
  }
  for (int64_t t = L - 1; t >= 0; --t) {
    for (int k = 0; k < K; ++k) {
      const int64_t i = k * L + t;
      out[i] = finish_step<false>(r[i], m[i], sh[k], sc[k], gamma, running[k]);
    }
  }
}

// --- per-position baselines (issue 21; the contract: r3hf/_group_stats.py, steps 1p-3p) -----------

// Rows grouped by their dense id: order[offsets[g] .. offsets[g+1]) are the rows of group g in row
// order (a stable counting sort). The tables are then filled one group per task, each group's rows
// in row order, so every sum is added in one fixed order whatever the threads: no racy scatter and
// no per-thread copies of the [n_groups, W] tables.
struct GroupRows {
  std::vector<int64_t> offsets, order;
  GroupRows(const int64_t* ids, int64_t B, int64_t n_groups) : offsets(n_groups + 1, 0), order(B) {
    for (int64_t i = 0; i < B; ++i) {
      TORCH_CHECK_VALUE(ids[i] >= 0 && ids[i] < n_groups, "position ids must be dense ids in [0, n_groups = ",
                        n_groups, "), got ", ids[i]);
      ++offsets[ids[i] + 1];
    }
    for (int64_t g = 0; g < n_groups; ++g) offsets[g + 1] += offsets[g];
    std::vector<int64_t> next(offsets.begin(), offsets.end() - 1);
    for (int64_t i = 0; i < B; ++i) order[next[ids[i]]++] = i;
  }
};

// One row's contribution to its group's tables: G at its p-th generated token added to sum[p] (and
// G² to sq[p] when sq is given), in increasing p; -> G at its last generated token (0 if none).
// The row must have at most W generated tokens (the caller's width).
// Runs of 8 generated (or 8 masked) positions, the common case, take a branch-free path.
inline bool all_set8(const bool* m) {
  uint64_t v;
  __builtin_memcpy(&v, m, 8);
  return v == 0x0101010101010101ull;
}

inline bool none_set8(const bool* m) {
  uint64_t v;
  __builtin_memcpy(&v, m, 8);
  return v == 0;
}

inline double add_positions(const float* __restrict__ G, const bool* __restrict__ m, int64_t L,
                            double* __restrict__ sum, double* __restrict__ sq, int64_t* count = nullptr) {
  int64_t p = 0;
  float last = 0.f;
  int64_t t = 0;
  for (; t + 8 <= L; t += 8) {
    if (none_set8(m + t)) continue;
    if (all_set8(m + t)) {
      for (int l = 0; l < 8; ++l) sum[p + l] += static_cast<double>(G[t + l]);
      if (sq != nullptr)
        for (int l = 0; l < 8; ++l) sq[p + l] += static_cast<double>(G[t + l]) * static_cast<double>(G[t + l]);
      p += 8;
      last = G[t + 7];
      continue;
    }
    for (int l = 0; l < 8; ++l) {
      if (!m[t + l]) continue;
      const double g = static_cast<double>(G[t + l]);
      sum[p] += g;
      if (sq != nullptr) sq[p] += g * g;
      ++p;
      last = G[t + l];
    }
  }
  for (; t < L; ++t) {
    if (!m[t]) continue;
    const double g = static_cast<double>(G[t]);
    sum[p] += g;
    if (sq != nullptr) sq[p] += g * g;
    ++p;
    last = G[t];
  }
  if (count != nullptr) *count = p;
  return static_cast<double>(last);
}

// Σ m of one row (its generated tokens).
inline int64_t generated(const bool* m, int64_t L) {
  int64_t n = 0;
  for (int64_t t = 0; t < L; ++t) n += m[t] ? 1 : 0;
  return n;
}

// A = m·(G − shift[p])·scale[p] of one row from its G [L], p counting up over its generated tokens.
inline void position_apply(const float* __restrict__ G, const bool* __restrict__ m, int64_t L,
                           const float* __restrict__ shift, const float* __restrict__ scale,
                           float* __restrict__ out) {
  int64_t p = 0, t = 0;
  for (; t + 8 <= L; t += 8) {
    if (none_set8(m + t)) {
      for (int l = 0; l < 8; ++l) out[t + l] = 0.f;
    } else if (all_set8(m + t)) {
      for (int l = 0; l < 8; ++l) out[t + l] = (G[t + l] - shift[p + l]) * scale[p + l];
      p += 8;
    } else {
      for (int l = 0; l < 8; ++l) {
        if (m[t + l]) {
          out[t + l] = (G[t + l] - shift[p]) * scale[p];
          ++p;
        } else {
          out[t + l] = 0.f;
        }
      }
    }
  }
  for (; t < L; ++t) {
    if (m[t]) {
      out[t] = (G[t] - shift[p]) * scale[p];
      ++p;
    } else {
      out[t] = 0.f;
    }
  }
}

// One finish step with per-position tables: G recomputed as finish_step<false> does (the same
// bits), A = m·(G − shift[p])·scale[p]; `p` counts down from n − 1 over the generated tokens.
inline float position_finish_step(float r, bool mk, const float* shift, const float* scale, float gamma,
                                  float& running, int64_t& p) {
  const float g = rtg_step(mk ? r : 0.f, mk, gamma, true, running);
  if (!mk) return 0.f;
  const float a = (g - shift[p]) * scale[p];
  --p;
  return a;
}

}  // namespace cpu
}  // namespace r3hf
