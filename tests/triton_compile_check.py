"""Compile every r3hf Triton kernel for NVIDIA GPUs without a GPU (Triton's ahead-of-time path).

Run in a process without TRITON_INTERPRET (the interpreter replaces kernels by Python). Prints
one line per kernel variant and exits 1 if any fails; exits 3 when this machine's Triton cannot
compile for CUDA at all (no NVIDIA backend or ptxas), so callers can skip.
Used by tests/test_triton_compile.py; catches what the interpreter cannot (types of loop-carried
values, tl.gather and scan lowering).
"""

from __future__ import annotations

import os
import sys

assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "run without TRITON_INTERPRET"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

POINTERS = {"x_ptr": "*bf16", "out_ptr": "*fp32", "sums_ptr": "*fp64", "sq_ptr": "*fp64", "m_ptr": "*u8", "p_ptr": "*i64", "f_ptr": "*i32", "h_ptr": "*bf16", "w_ptr": "*bf16",
            "v_ptr": "*bf16", "lp_ptr": "*fp16", "ref_ptr": "*fp16", "s_ptr": "*fp32", "r_ptr": "*bf16",
            "stats_ptr": "*fp64", "st_ptr": "*fp64", "ci_ptr": "*i32", "cu_ptr": "*i64", "starts_ptr": "*i32",
            "ids_ptr": "*i64", "ps_ptr": "*fp64", "last_ptr": "*fp64", "cnt_ptr": "*i32"}
FLOATS = {"eps", "gamma", "lam", "beta_c", "one_minus_beta", "kl_coef", "clip_lo", "clip_hi", "kl_lo", "kl_hi"}


def signature(fn, consts):
    sig = {}
    for p in fn.params:
        if p.is_constexpr:
            sig[p.name] = "constexpr"
        elif p.name.endswith("_ptr"):
            sig[p.name] = POINTERS.get(p.name, "*fp32")
        elif p.name in FLOATS:
            sig[p.name] = "fp32"
        else:
            sig[p.name] = "i32"
    missing = [k for k, v in sig.items() if v == "constexpr" and k not in consts]
    assert not missing, f"{fn.__name__}: give constexpr values for {missing}"
    return sig


def cases():
    """Every kernel variant, in the padded [B, L] mode and the packed VARLEN (cu_seqlens) mode."""
    from r3hf.kernels import fused, gae, group, position, projection, returns, rewards, whiten

    reward_consts = dict(FIRST_PROMPT=True, FULL_BETA=False, HAS_CLIP=True, HAS_KL=True, KL_EST=2,
                         HAS_KL_CLAMP=True, MULTI=True, BLOCK_T=64, BLOCK_C=16, FLIP=True)
    for varlen in (False, True):
        v = dict(VARLEN=varlen)
        tag = "_varlen" if varlen else ""
        for flip in (True, False):
            yield "gae_summary" + tag, gae._gae_summary_kernel, dict(BLOCK_T=256, FLIP=flip, **v), 2
            yield "gae_final" + tag, gae._gae_final_kernel, dict(HAS_BOOT=flip, BLOCK_T=1024, BLOCK_C=16, FLIP=flip,
                                                                 **v), 8
            yield "token_rewards" + tag, rewards._token_rewards_kernel, {
                **reward_consts, "FLIP": flip, "MULTI": flip, "FIRST_PROMPT": flip, "KL_EST": 1 + flip, **v}, 1
            for cfg in fused._CONFIGS:
                yield "fused" + tag, fused._fused_kernel, {
                    **reward_consts, "HAS_BIAS": flip, "HAS_BOOT": flip, "MULTI": flip, "FLIP": flip,
                    "FIRST_PROMPT": not flip, "POT": flip, "HAS_PBIAS": flip, **cfg.kwargs, **v}, cfg.num_warps
            for skip, transform, stats in [(True, False, True), (False, False, False), (True, True, False)]:
                scan = dict(SKIP=skip, TRANSFORM=transform, STATS=stats, FLIP=flip, POS=False, SQUARES=False, **v)
                yield "rtg_row" + tag, returns._rtg_row_kernel, dict(**scan, MULTI=stats, BLOCK_T=256), 2
                yield "rtg_final" + tag, returns._rtg_final_kernel, dict(**scan, BLOCK_T=1024, BLOCK_C=16), 8
            # baseline="position" (issue 21): the row pass with the per-position tables, both chunk paths
            for multi, squares in [(False, True), (True, False)]:
                scan = dict(SKIP=True, TRANSFORM=False, STATS=True, FLIP=flip, POS=True, SQUARES=squares, **v)
                yield "rtg_row_pos" + tag, returns._rtg_row_kernel, dict(**scan, MULTI=multi, BLOCK_T=256), 2
            yield "rtg_final_pos" + tag, returns._rtg_final_kernel, dict(
                SKIP=True, TRANSFORM=False, STATS=True, FLIP=flip, POS=True, SQUARES=flip, BLOCK_T=1024, BLOCK_C=16,
                **v), 8
            for cfg in group._CONFIGS:
                for pos in (False, True):
                    yield "fused_group" + ("_pos" if pos else "") + tag, group._fused_group_kernel, {
                        **reward_consts, "HAS_BIAS": flip, "MULTI": flip, "FLIP": flip, "FIRST_PROMPT": not flip,
                        "POT": not flip, "HAS_PBIAS": not flip, "POS": pos, "SQUARES": pos and not flip, **cfg.kwargs,
                        **v}, cfg.num_warps
        yield "row_stats" + tag, returns._row_stats_kernel, dict(BLOCK_C=16, BLOCK_T=64, **v), 1
        for pos in (False, True):
            yield "affine" + ("_pos" if pos else "") + tag, returns._affine_kernel, dict(BLOCK=1024, POS=pos,
                                                                                           BLOCK_C=16, **v), 4
        yield "chunk_counts" + tag, position._chunk_counts_kernel, dict(BLOCK=1024, **v), 4
        yield "first_unmasked" + tag, rewards._first_unmasked_kernel, dict(BLOCK_T=64, **v), 4
        for multi in (False, True) if varlen else (False,):
            yield "whiten_apply" + tag, whiten._whiten_apply_kernel, dict(
                SHIFT_MEAN=True, UNBIASED=True, EPS_MAX=multi, TRANSFORM_MASKED=varlen, BLOCK=1024, MULTI=multi,
                BLOCK_C=16, **v), 4
    yield "kl", rewards._kl_kernel, dict(KL_EST=3, HAS_KL_CLAMP=True, BLOCK=1024), 4
    for cfg in projection._CONFIGS:
        yield "prefix_scores", projection._prefix_scores_kernel, dict(HAS_BIAS=True, **cfg.kwargs), cfg.num_warps


def main() -> int:
    arch = int(os.environ.get("R3HF_COMPILE_ARCH", "90"))
    target = GPUTarget("cuda", arch, 32)
    try:
        probe = next(c for c in cases() if c[0] == "first_unmasked")
        fn = probe[1]
        triton.compile(ASTSource(fn=fn, signature=signature(fn, probe[2]), constexprs=probe[2]), target=target,
                       options={"num_warps": 4})
    except Exception as e:  # no CUDA toolchain in this Triton install
        print(f"cannot compile for CUDA here: {type(e).__name__}: {str(e)[:300]}")
        return 3
    failed = 0
    for name, fn, consts, warps in cases():
        fn = fn.fn if isinstance(fn, triton.runtime.Autotuner) else fn
        try:
            triton.compile(ASTSource(fn=fn, signature=signature(fn, consts), constexprs=consts), target=target,
                           options={"num_warps": warps})
            print(f"ok   sm_{arch} {name} {consts}")
        except Exception as e:
            failed += 1
            print(f"FAIL sm_{arch} {name} {consts}: {type(e).__name__}: {str(e)[:2000]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
