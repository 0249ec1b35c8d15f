// CPU masked_whiten in three phases (schemas in csrc/library.cpp), so that r3hf/backends/cpp.py can
// all-reduce the statistics across ranks (torch.distributed) between them:
//   whiten_sums(x, mask)                 -> float64 [2]: (count, Σ x) over mask
//   whiten_sqsum(x, mask, sums)          -> float64 [1]: Σ (x − mean)² over mask
//   whiten_apply(x, mask, sums, sqsum, …) -> float32, shape of x
// As r3hf/reference/whiten.py: x is read as fp32, the sums are float64, mean and var are rounded to
// fp32, out = (x − mean)·rsqrt(var + eps) (or rsqrt(max(var, eps))). The sums run over fixed blocks
// of kBlock elements, each summed in order, and the block partials are added in order, so the result
// is bitwise the same for any thread count. No value is read back to the host here: the count check
// is done by the caller (r3hf._checks).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../op_args.h"

namespace r3hf {
namespace {

using at::Tensor;

constexpr int64_t kBlock = 8192;

void check_inputs(const Tensor& x, const Tensor& mask) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), "x must be a CPU tensor for the CPU kernel, got ", x.device());
  TORCH_CHECK_VALUE(x.sizes() == mask.sizes(), "mask must have the shape of x");
}

// Σ over the blocks of f(i) for the masked i, each block in order, blocks in order.
template <typename F>
double blocked_sum(int64_t n, const bool* m, F f) {
  const int64_t nb = (n + kBlock - 1) / kBlock;
  std::vector<double> part(std::max<int64_t>(nb, 1), 0.0);
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      double acc = 0.0;
      const int64_t end = std::min(n, (b + 1) * kBlock);
      for (int64_t i = b * kBlock; i < end; ++i)
        if (m[i]) acc += f(i);
      part[b] = acc;
    }
  });
  double total = 0.0;
  for (int64_t b = 0; b < nb; ++b) total += part[b];
  return total;
}

int64_t blocked_count(int64_t n, const bool* m) {
  const int64_t nb = (n + kBlock - 1) / kBlock;
  std::vector<int64_t> part(std::max<int64_t>(nb, 1), 0);
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t c = 0;
      const int64_t end = std::min(n, (b + 1) * kBlock);
      for (int64_t i = b * kBlock; i < end; ++i) c += m[i];
      part[b] = c;
    }
  });
  int64_t total = 0;
  for (int64_t b = 0; b < nb; ++b) total += part[b];
  return total;
}

// fp32 mean as the reference rounds it: (Σx / n) in float64, then to fp32.
float mean_of(const Tensor& sums) {
  const double* s = sums.data_ptr<double>();
  return static_cast<float>(s[1] / s[0]);
}

#define R3HF_DISPATCH_X(TYPE, NAME, ...) AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

Tensor whiten_sums_cpu(const Tensor& x_in, const Tensor& mask_in) {
  check_inputs(x_in, mask_in);
  const Tensor x = x_in.contiguous(), mask = as_bool(mask_in);
  const int64_t n = x.numel();
  const bool* m = mask.data_ptr<bool>();
  Tensor out = at::empty({2}, x.options().dtype(at::kDouble));
  double* o = out.data_ptr<double>();
  o[0] = static_cast<double>(blocked_count(n, m));
  R3HF_DISPATCH_X(x.scalar_type(), "r3hf::whiten_sums", [&] {
    const scalar_t* p = x.data_ptr<scalar_t>();
    o[1] = blocked_sum(n, m, [&](int64_t i) { return static_cast<double>(static_cast<float>(p[i])); });
  });
  return out;
}

Tensor whiten_sqsum_cpu(const Tensor& x_in, const Tensor& mask_in, const Tensor& sums_in) {
  check_inputs(x_in, mask_in);
  const Tensor x = x_in.contiguous(), mask = as_bool(mask_in);
  const Tensor sums = sums_in.to(at::kDouble).contiguous();
  TORCH_CHECK_VALUE(sums.numel() == 2, "sums must be [2] (count, sum)");
  const int64_t n = x.numel();
  const bool* m = mask.data_ptr<bool>();
  const float mean = mean_of(sums);
  Tensor out = at::empty({1}, x.options().dtype(at::kDouble));
  R3HF_DISPATCH_X(x.scalar_type(), "r3hf::whiten_sqsum", [&] {
    const scalar_t* p = x.data_ptr<scalar_t>();
    out.data_ptr<double>()[0] = blocked_sum(n, m, [&](int64_t i) {
      const double c = static_cast<double>(static_cast<float>(p[i]) - mean);  // fp32 centring, as the reference
      return c * c;
    });
  });
  return out;
}

Tensor whiten_apply_cpu(const Tensor& x_in, const Tensor& mask_in, const Tensor& sums_in, const Tensor& sqsum_in,
                        bool shift_mean, bool unbiased, double eps, bool eps_max, bool transform_masked) {
  check_inputs(x_in, mask_in);
  const Tensor x = x_in.contiguous(), mask = as_bool(mask_in);
  const Tensor sums = sums_in.to(at::kDouble).contiguous(), sqsum = sqsum_in.to(at::kDouble).contiguous();
  const double count = sums.data_ptr<double>()[0];
  const float mean = mean_of(sums);
  const float var = static_cast<float>(sqsum.data_ptr<double>()[0] / (unbiased ? count - 1.0 : count));
  const float feps = static_cast<float>(eps);
  const float scale = 1.f / std::sqrt(eps_max ? (var < feps ? feps : var) : var + feps);
  Tensor out = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  const int64_t n = x.numel();
  const bool* m = mask.data_ptr<bool>();
  float* o = out.data_ptr<float>();
  R3HF_DISPATCH_X(x.scalar_type(), "r3hf::whiten_apply", [&] {
    const scalar_t* p = x.data_ptr<scalar_t>();
    at::parallel_for(0, n, int64_t{1} << 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        float v = (static_cast<float>(p[i]) - mean) * scale;
        if (!shift_mean) v = v + mean;
        o[i] = (transform_masked || m[i]) ? v : 0.f;
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(r3hf, CPU, m) {
  m.impl("whiten_sums", &whiten_sums_cpu);
  m.impl("whiten_sqsum", &whiten_sqsum_cpu);
  m.impl("whiten_apply", &whiten_apply_cpu);
}

}  // namespace r3hf
