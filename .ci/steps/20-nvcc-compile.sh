#!/usr/bin/env bash
# Compile-only check of the CUDA code for sm_80 and sm_90 with the machine's nvcc (no GPU needed).
# 1. csrc/cuda/kernels.cuh alone, without torch (the kernels and csrc/r3hf_math.h);
# 2. every csrc/cuda/*.cu with torch's headers from .venv. A CPU build of torch ships the c10/cuda
#    headers but not the generated c10/cuda/impl/cuda_cmake_macros.h, so a stand-in is written to a
#    temporary include dir. Fails on any compile error.
set -euo pipefail
cd "$(dirname "$0")/../.."
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
[ -x "$NVCC" ] || { echo "nvcc not found (set NVCC=...)"; exit 1; }
PY=${PY:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
arch=(-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90)
flags=(-std=c++20 -O3 --fmad=false -Xcompiler -Wall -diag-suppress 3306)
# as torch.utils.cpp_extension compiles CUDAExtension sources
torch_flags=(--expt-relaxed-constexpr -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__)
"$NVCC" --version | tail -1

echo "-- kernels.cuh without torch"
printf '#include "kernels.cuh"\n' > "$work/standalone.cu"
# Instantiate every projection kernel so the templates are compiled too.
cat >> "$work/standalone.cu" <<'CU'
template __global__ void r3hf::cuda::project_kernel<float>(const float*, int64_t, int64_t, const float*, const float*, int64_t, const int64_t*, const bool*, int64_t, int64_t, float*);
template __global__ void r3hf::cuda::project_kernel<double>(const double*, int64_t, int64_t, const float*, const float*, int64_t, const int64_t*, const bool*, int64_t, int64_t, float*);
template __global__ void r3hf::cuda::project_kernel<__half>(const __half*, int64_t, int64_t, const float*, const float*, int64_t, const int64_t*, const bool*, int64_t, int64_t, float*);
template __global__ void r3hf::cuda::project_kernel<__nv_bfloat16>(const __nv_bfloat16*, int64_t, int64_t, const float*, const float*, int64_t, const int64_t*, const bool*, int64_t, int64_t, float*);
CU
"$NVCC" "${arch[@]}" "${flags[@]}" -Icsrc/cuda -c "$work/standalone.cu" -o "$work/standalone.o"

echo "-- csrc/cuda/*.cu with torch's headers"
inc=$("$PY" -c "from torch.utils.cpp_extension import include_paths; print(' '.join(include_paths()))")
abi=$("$PY" -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")
pyinc=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
mkdir -p "$work/shim/c10/cuda/impl"
printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > "$work/shim/c10/cuda/impl/cuda_cmake_macros.h"
mkdir -p "$work/gen"
printf '#pragma once\n#define R3HF_WITH_CUDA 1\n' > "$work/gen/r3hf_build_config.h"
for cu in csrc/cuda/*.cu; do
  echo "   $cu"
  # shellcheck disable=SC2046
  "$NVCC" "${arch[@]}" "${flags[@]}" "${torch_flags[@]}" -I"$work/shim" -I"$work/gen" $(printf -- '-I%s ' $inc) -I"$pyinc" -Icsrc \
    -D_GLIBCXX_USE_CXX11_ABI="$abi" -DTORCH_EXTENSION_NAME=_C -c "$cu" -o "$work/$(basename "$cu").o"
done
echo "nvcc compile check passed (sm_80, sm_90)"
