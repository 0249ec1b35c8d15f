"""The C++/CUDA backend: `torch.ops.r3hf.*` from the compiled extension `r3hf._C` (csrc/).

Follows the protocol of `r3hf._dispatch`: `OPS`, `unavailable_reason(device)`, `describe()`,
`build_info()` and one function per op with the reference's signature and semantics (arguments
already normalised by `r3hf._validate`). When `r3hf._C` is missing or fails to load, this module
still imports, reports why, and warns once; `r3hf.ops` then runs on the torch backend.
Setting R3HF_NO_EXT=1 at run time ignores a built extension (and does not warn).
"""

from __future__ import annotations

import functools
import importlib.util
import mmap
import os
import warnings

import torch

from r3hf import _checks
from r3hf.reference.whiten import _all_reduce

OPS = (
    "prefix_scores", "redistribute", "kl_penalty", "token_rewards", "gae", "fused_reward_gae",
    "masked_whiten", "reward_to_go", "group_advantages", "fused_reward_group_advantages",
)
# Peer-convention options this backend implements (see r3hf._dispatch).
OPTIONS = {"masked_whiten": ("transform_masked", "eps_mode", "cu_seqlens")}
# Packed sequences (cu_seqlens, issue 16): every op, CPU kernels only (packed CUDA runs on Triton).
OPTIONS.update({op: OPTIONS.get(op, ()) + ("cu_seqlens",) for op in OPS if op != "masked_whiten"})
OPTION_DEVICES = {"cu_seqlens": ("cpu",)}
# baseline="position" (issue 21): CPU kernels, padded and packed (group ops are CPU-only here anyway).
for _op in ("group_advantages", "fused_reward_group_advantages"):
    OPTIONS[_op] = OPTIONS[_op] + ("baseline",)
# A potential head on the fused ops (issue 24): one read of each needed hidden row, CPU and CUDA.
for _op in ("fused_reward_gae", "fused_reward_group_advantages"):
    OPTIONS[_op] += ("potential_weight", "potential_bias")

# A separate potential on the reward ops (issue 24), CPU padded and packed: the row kernels take
# `potential` next to `scores` and read Φ' from the one and R (each row's score after its last
# generated token) from the other, in place (csrc/r3hf_math.h token_rewards_row, cpu/rewards_row.h).
# The CUDA C++ op has the same argument (compile-checked only; no GPU has run it), so CUDA tensors
# with a potential go to Triton or torch.
for _op in ("redistribute", "token_rewards"):
    OPTIONS[_op] += ("potential",)
OPTION_DEVICES["potential"] = ("cpu",)

# Ops with CPU kernels only in r3hf._C (Triton runs them on CUDA).
OP_DEVICES = {op: ("cpu",) for op in ("masked_whiten", "reward_to_go", "group_advantages", "fused_reward_group_advantages")}

BUILD_HINT = "build it with `pip install --no-build-isolation -e .` (or `pip install --no-build-isolation .`) with torch installed"

_C = None
_LOAD_ERROR: str | None = None
# csrc/library.cpp embeds this prefix and the build's torch.__version__ in the .so (NUL-terminated).
_TORCH_MARKER = b"r3hf-built-against-torch="


def _release(version: str) -> str:
    """'2.11.0+cu130' -> '2.11.0': CPU and CUDA wheels of one torch release share its C++ ABI."""
    return version.split("+", 1)[0]


def built_against_torch(path: str) -> str | None:
    """The torch version the extension file at `path` was compiled against, read from its bytes
    without loading it; None for a build that predates the marker."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        i = data.find(_TORCH_MARKER)
        if i < 0:
            return None
        j = data.find(b"\0", i)
        return data[i + len(_TORCH_MARKER):j].decode("ascii", "replace")


def _foreign_torch() -> str | None:
    """Why r3hf._C must not be loaded under this torch, or None (also None when it is not built)."""
    spec = importlib.util.find_spec("r3hf._C")
    if spec is None or not spec.origin:
        return None
    built = built_against_torch(spec.origin)
    if built is None or built == "unknown" or _release(built) == _release(torch.__version__):
        return None
    return (
        f"r3hf._C was built against torch {built} but torch {torch.__version__} is running; rebuild it in this "
        f"environment with `pip install --no-build-isolation --force-reinstall --no-deps r3hf` (or, from a "
        f"source checkout, `pip install --no-build-isolation -e .`)"
    )


if os.environ.get("R3HF_NO_EXT", "0") == "1":
    _LOAD_ERROR = "disabled by R3HF_NO_EXT=1"
else:
    _LOAD_ERROR = _foreign_torch()
    if _LOAD_ERROR is None:
        try:
            from r3hf import _C  # noqa: F811  (registers torch.ops.r3hf.* on import)
        except (ImportError, OSError) as e:  # not built, or an older build against another torch
            _LOAD_ERROR = f"r3hf._C could not be loaded ({e}); {BUILD_HINT}"
    if _LOAD_ERROR is not None:
        # This module is imported once per process (r3hf._dispatch caches it): one warning.
        warnings.warn(f"r3hf: C++ extension unavailable, falling back to the other backends: {_LOAD_ERROR}",
                      RuntimeWarning, stacklevel=2)


def build_info() -> dict:
    """What the loaded extension was built with: cpu, cuda, cuda_archs, cuda_version, torch_version, debug."""
    if _C is None:
        return {"built": False, "reason": _LOAD_ERROR}
    return {"built": True, **_C.build_info()}


def describe() -> str:
    if _C is None:
        return f"C++ extension unavailable: {_LOAD_ERROR}"
    info = _C.build_info()
    where = "CPU" + (f" + CUDA {info['cuda_version']} (archs {info['cuda_archs']})" if info["cuda"] else "")
    return f"C++ extension r3hf._C: {where}, built against torch {info['torch_version']}"


def unavailable_reason(device: torch.device) -> str | None:
    if _C is None:
        return _LOAD_ERROR
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        if not _C.build_info()["cuda"]:
            return "r3hf._C was built without CUDA (no CUDA toolkit or CPU-only torch at build time; see docs/ENV.md)"
        return None
    return f"r3hf._C has no kernels for {device.type} tensors"


def _range(r):
    return None if r is None else [float(r[0]), float(r[1])]


# Packed mode (cu_seqlens int64 [N + 1], see PACKED_CONTRACT.md): per-token tensors are [T], hidden is
# [T, D], prompt_len is None, bootstrap and the group index are per sequence [N]. The per-position
# ops (prefix_scores, kl_penalty) run their padded kernel on the stream; the others have packed
# kernels (csrc/cpu/packed_cpu.cpp, packed_group_cpu.cpp).


def prefix_scores(hidden, weight, bias, *, cu_seqlens=None):
    if cu_seqlens is not None:  # per position: the padded kernel on the stream as one row
        return torch.ops.r3hf.prefix_scores(hidden.reshape(1, *hidden.shape[-2:]), weight, bias)[0]
    return torch.ops.r3hf.prefix_scores(hidden, weight, bias)


def redistribute(scores, response_mask, prompt_len, first="prompt", beta_c=1.0, *, cu_seqlens=None, potential=None):
    if cu_seqlens is not None:
        return torch.ops.r3hf.packed_token_rewards(
            scores, response_mask, cu_seqlens, None, None, 0.0, "k1", None, first, float(beta_c), None, potential)
    return torch.ops.r3hf.redistribute(scores, response_mask, prompt_len, first, float(beta_c), potential)


def kl_penalty(logprobs, ref_logprobs, estimator="k1", clamp=None, *, cu_seqlens=None):
    # Elementwise over all T positions: cu_seqlens only validated (by r3hf._validate).
    return torch.ops.r3hf.kl_penalty(logprobs, ref_logprobs, estimator, _range(clamp))


def token_rewards(
    scores, response_mask, prompt_len, logprobs=None, ref_logprobs=None, kl_coef=0.0, kl_estimator="k1",
    kl_clamp=None, first="prompt", beta_c=1.0, reward_clip=None, *, cu_seqlens=None, potential=None,
):
    if cu_seqlens is not None:
        return torch.ops.r3hf.packed_token_rewards(
            scores, response_mask, cu_seqlens, logprobs, ref_logprobs, float(kl_coef), kl_estimator,
            _range(kl_clamp), first, float(beta_c), _range(reward_clip), potential,
        )
    return torch.ops.r3hf.token_rewards(
        scores, response_mask, prompt_len, logprobs, ref_logprobs, float(kl_coef), kl_estimator, _range(kl_clamp),
        first, float(beta_c), _range(reward_clip), potential,
    )


def gae(rewards, values, response_mask, gamma=1.0, lam=0.95, bootstrap=None, *, cu_seqlens=None):
    if cu_seqlens is not None:
        return torch.ops.r3hf.packed_gae(rewards, values, response_mask, cu_seqlens, float(gamma), float(lam),
                                         bootstrap)
    return torch.ops.r3hf.gae(rewards, values, response_mask, float(gamma), float(lam), bootstrap)


def fused_reward_gae(
    hidden, weight, bias, values, response_mask, prompt_len, logprobs=None, ref_logprobs=None, kl_coef=0.0,
    kl_estimator="k1", kl_clamp=None, gamma=1.0, lam=0.95, first="prompt", beta_c=1.0, reward_clip=None,
    bootstrap=None, *, cu_seqlens=None, potential_weight=None, potential_bias=None,
):
    if cu_seqlens is not None:
        return torch.ops.r3hf.packed_fused_reward_gae(
            hidden, weight, bias, values, response_mask, cu_seqlens, logprobs, ref_logprobs, float(kl_coef),
            kl_estimator, _range(kl_clamp), float(gamma), float(lam), first, float(beta_c), _range(reward_clip),
            bootstrap, potential_weight, potential_bias,
        )
    return torch.ops.r3hf.fused_reward_gae(
        hidden, weight, bias, values, response_mask, prompt_len, logprobs, ref_logprobs, float(kl_coef),
        kl_estimator, _range(kl_clamp), float(gamma), float(lam), first, float(beta_c), _range(reward_clip),
        bootstrap, potential_weight, potential_bias,
    )


def masked_whiten(x, mask, shift_mean=True, unbiased=True, eps=1e-8, group=None, transform_masked=False,
                  eps_mode="add", *, cu_seqlens=None):
    # Statistics, then the all-reduce across ranks (Python, between the phases), then the transform.
    # Packed: the statistics are over mask as padded; transform_masked transforms the response
    # regions only (holes and trailing tokens), never prompt positions, which is the padded op's
    # masked transform with the region as its mask.
    if cu_seqlens is not None and transform_masked:
        region = torch.ops.r3hf.packed_response_region(mask, cu_seqlens)
        out_mask, transform_masked = region, False
    else:
        out_mask = mask
    sums = _all_reduce(torch.ops.r3hf.whiten_sums(x, mask), group)
    _checks.whiten_count(sums[:1], unbiased)
    sqsum = _all_reduce(torch.ops.r3hf.whiten_sqsum(x, mask, sums), group)
    return torch.ops.r3hf.whiten_apply(x, out_mask, sums, sqsum, shift_mean, unbiased, float(eps),
                                       eps_mode == "max", transform_masked)


# --- group advantages (issue 12): C++ row pass and finish around r3hf/_group_stats.affine ------


def reward_to_go(rewards, response_mask, gamma=1.0, holes="skip", *, cu_seqlens=None):
    if cu_seqlens is not None:
        return torch.ops.r3hf.packed_reward_to_go(rewards, response_mask, cu_seqlens, float(gamma), holes)
    return torch.ops.r3hf.reward_to_go(rewards, response_mask, float(gamma), holes)


# The row pass returns no `returns` tensor (None): the C++ finish recomputes G from the rewards
# with the same fp32 operations, so G is never written to or read back from memory. The
# statistics are r3hf/_group_stats.py's [B, 5] float64 columns; group_advantages computes only
# the columns its estimator reads (_group_stats.COLUMNS), the others are NaN.
def _row_pass(rewards, response_mask, gamma, cu_seqlens=None, estimator=None, *, positions=None):
    from r3hf import _group_stats as gs

    if positions is not None:  # baseline="position": -> (None, stats, sums, last), step 1p
        ids, n_groups, width, squares = positions
        if cu_seqlens is not None:
            return None, *torch.ops.r3hf.packed_group_position_row_pass(
                rewards, response_mask, cu_seqlens, ids, n_groups, width, float(gamma), squares)
        return None, *torch.ops.r3hf.group_position_row_pass(rewards, response_mask, ids, n_groups, width,
                                                               float(gamma), squares)
    cols = gs.COLUMNS.get(estimator, range(gs.N_STATS))
    returns_stats = gs.STAT_SUM_G in cols or gs.STAT_M2_G in cols
    reward_m2 = gs.STAT_M2_R in cols
    if cu_seqlens is not None:
        return None, torch.ops.r3hf.packed_group_row_pass(rewards, response_mask, cu_seqlens, float(gamma),
                                                          returns_stats, reward_m2)
    return None, torch.ops.r3hf.group_row_pass(rewards, response_mask, float(gamma), returns_stats, reward_m2)


def _fused_row_pass(hidden, weight, bias, response_mask, prompt_len, logprobs, ref_logprobs, kl_coef, kl_estimator,
                    kl_clamp, first, beta_c, reward_clip, gamma, cu_seqlens=None, potential_weight=None,
                    potential_bias=None, *, positions=None):
    if positions is not None:
        # The fused kernel forms the rewards, then the position row pass reads them once more.
        rewards, _, _ = _fused_row_pass(hidden, weight, bias, response_mask, prompt_len, logprobs, ref_logprobs,
                                        kl_coef, kl_estimator, kl_clamp, first, beta_c, reward_clip, gamma, cu_seqlens,
                                        potential_weight, potential_bias)
        return (rewards, *_row_pass(rewards, response_mask, gamma, cu_seqlens, positions=positions))
    if cu_seqlens is not None:
        rewards, stats = torch.ops.r3hf.packed_fused_reward_group_row_pass(
            hidden, weight, bias, response_mask, cu_seqlens, logprobs, ref_logprobs, float(kl_coef), kl_estimator,
            _range(kl_clamp), first, float(beta_c), _range(reward_clip), float(gamma), potential_weight,
            potential_bias,
        )
        return rewards, None, stats
    rewards, stats = torch.ops.r3hf.fused_reward_group_row_pass(
        hidden, weight, bias, response_mask, prompt_len, logprobs, ref_logprobs, float(kl_coef), kl_estimator,
        _range(kl_clamp), first, float(beta_c), _range(reward_clip), float(gamma), potential_weight, potential_bias,
    )
    return rewards, None, stats


def _finish(rewards, returns, response_mask, shift, scale, gamma, on_rewards, cu_seqlens=None, *, ids=None):
    if ids is not None:  # baseline="position": shift/scale [n_groups, W], step 3p
        if cu_seqlens is not None:
            return torch.ops.r3hf.packed_group_position_finish(rewards, response_mask, cu_seqlens, ids, shift, scale,
                                                               float(gamma))
        return torch.ops.r3hf.group_position_finish(rewards, response_mask, ids, shift, scale, float(gamma))
    if cu_seqlens is not None:
        return torch.ops.r3hf.packed_group_finish(rewards, response_mask, cu_seqlens, shift, scale, float(gamma),
                                                  bool(on_rewards))
    return torch.ops.r3hf.group_finish(rewards, response_mask, shift, scale, float(gamma), bool(on_rewards))


def _affine_position(stats, sums, last, positions, estimator, eps, scale, group=None):
    """Step 2p: one C++ pass per group over its [W] tables; across ranks (`group`) the torch form,
    which all-reduces the tables first."""
    from r3hf import _group_stats as gs

    if group is not None:
        return gs.affine_position(stats, sums, last, positions, estimator, eps, scale, group)
    return torch.ops.r3hf.group_position_affine(stats, sums, last, positions.ids, estimator, float(eps), scale)


def _affine(stats, index, estimator, eps, scale, group=None):
    """Step 2 (baseline "row"): one C++ call on one process (the ~40 tiny torch ops of
    `_group_stats.affine` cost a fifth of a grpo op at B = 1024); across ranks (`group`) the torch
    form, which all-gathers the statistics first."""
    from r3hf import _group_stats as gs

    if group is not None:
        return gs.affine(stats, index, estimator, eps, scale, group)
    shift, mult = torch.ops.r3hf.group_row_affine(stats, index, estimator, float(eps), scale)
    return shift, mult, estimator == "grpo_process"


# Packed (cu_seqlens): a sequence is a row, index is [N]; r3hf._group_stats hands cu_seqlens to the
# passes (affine works on the [N] statistics as padded).
def group_advantages(rewards, response_mask, index, estimator="grpo", gamma=1.0, eps=1e-6, scale="group", group=None,
                     *, cu_seqlens=None, baseline="row"):
    from r3hf import _group_stats

    if (baseline == "position" and group is None and cu_seqlens is None
            and estimator in ("rloo", "grpo", "reinforce_pp_baseline")):
        # One pass per group (rloo, grpo: bitwise the three-op path; reinforce_pp_baseline: a whitening
        # pass follows, the same to rounding; group_position_affine.cpp).
        pos = _group_stats.position_layout(index, response_mask, estimator, scale)
        return torch.ops.r3hf.group_position_advantages(rewards, response_mask, pos.ids, pos.n_groups, pos.width,
                                                        float(gamma), estimator, float(eps), scale)
    row_pass = functools.partial(_row_pass, estimator=estimator)
    return _group_stats.group_advantages(row_pass, _finish, rewards, response_mask, index, estimator, gamma, eps,
                                         scale, group, cu_seqlens=cu_seqlens, baseline=baseline,
                                         affine_position_fn=_affine_position, affine_fn=_affine)


def fused_reward_group_advantages(
    hidden, weight, bias, response_mask, prompt_len, index, estimator="grpo", logprobs=None, ref_logprobs=None,
    kl_coef=0.0, kl_estimator="k1", kl_clamp=None, first="prompt", beta_c=1.0, reward_clip=None, gamma=1.0,
    eps=1e-6, scale="group", group=None, *, cu_seqlens=None, baseline="row", potential_weight=None,
    potential_bias=None,
):
    from r3hf import _group_stats

    return _group_stats.fused_reward_group_advantages(
        _fused_row_pass, _finish, hidden, weight, bias, response_mask, prompt_len, index, estimator, logprobs,
        ref_logprobs, kl_coef, kl_estimator, kl_clamp, first, beta_c, reward_clip, gamma, eps, scale, group,
        cu_seqlens=cu_seqlens, baseline=baseline, potential_weight=potential_weight, potential_bias=potential_bias,
        affine_position_fn=_affine_position, affine_fn=_affine,
    )


# --- shapes for tracing (torch.compile, FakeTensor, meta) --------------------------------

if _C is not None:

    from r3hf._group_stats import N_STATS as _N_STATS

    def _f32(like: torch.Tensor, *shape):
        return like.new_empty(shape, dtype=torch.float32)

    @torch.library.register_fake("r3hf::prefix_scores")
    def _(hidden, weight, bias):
        return _f32(hidden, hidden.shape[0], hidden.shape[1])

    @torch.library.register_fake("r3hf::redistribute")
    def _(scores, response_mask, prompt_len, first, beta_c, potential=None):
        return _f32(scores, *response_mask.shape)

    @torch.library.register_fake("r3hf::kl_penalty")
    def _(logprobs, ref_logprobs, estimator, clamp):
        return _f32(logprobs, *logprobs.shape)

    @torch.library.register_fake("r3hf::token_rewards")
    def _(scores, response_mask, prompt_len, logprobs, ref_logprobs, kl_coef, kl_estimator, kl_clamp, first,
          beta_c, reward_clip, potential=None):
        return _f32(scores, *response_mask.shape)

    @torch.library.register_fake("r3hf::gae")
    def _(rewards, values, response_mask, gamma, lam, bootstrap):
        return _f32(rewards, *rewards.shape), _f32(rewards, *rewards.shape)

    @torch.library.register_fake("r3hf::fused_reward_gae")
    def _(hidden, weight, bias, values, response_mask, prompt_len, logprobs, ref_logprobs, kl_coef, kl_estimator,
          kl_clamp, gamma, lam, first, beta_c, reward_clip, bootstrap, potential_weight=None, potential_bias=None):
        shape = response_mask.shape
        return _f32(hidden, *shape), _f32(hidden, *shape), _f32(hidden, *shape)

    @torch.library.register_fake("r3hf::whiten_sums")
    def _(x, mask):
        return x.new_empty((2,), dtype=torch.float64)

    @torch.library.register_fake("r3hf::whiten_sqsum")
    def _(x, mask, sums):
        return x.new_empty((1,), dtype=torch.float64)

    @torch.library.register_fake("r3hf::whiten_apply")
    def _(x, mask, sums, sqsum, shift_mean, unbiased, eps, eps_max, transform_masked):
        return _f32(x, *x.shape)

    @torch.library.register_fake("r3hf::reward_to_go")
    def _(rewards, response_mask, gamma, holes):
        return _f32(rewards, *rewards.shape)

    @torch.library.register_fake("r3hf::group_row_pass")
    def _(rewards, response_mask, gamma, returns_stats=True, reward_m2=True):
        return rewards.new_empty((rewards.shape[0], _N_STATS), dtype=torch.float64)

    @torch.library.register_fake("r3hf::fused_reward_group_row_pass")
    def _(hidden, weight, bias, response_mask, prompt_len, logprobs, ref_logprobs, kl_coef, kl_estimator, kl_clamp,
          first, beta_c, reward_clip, gamma, potential_weight=None, potential_bias=None):
        shape = response_mask.shape
        return _f32(hidden, *shape), hidden.new_empty((shape[0], _N_STATS), dtype=torch.float64)

    @torch.library.register_fake("r3hf::group_finish")
    def _(rewards, response_mask, shift, scale, gamma, on_rewards):
        return _f32(rewards, *rewards.shape)

    @torch.library.register_fake("r3hf::group_row_affine")
    def _(stats, index, estimator, eps, scale):
        return _f32(stats, stats.shape[0]), _f32(stats, stats.shape[0])

    # Packed ops (cu_seqlens): [T] outputs, [N, 5] statistics.

    def _T(like, mask):
        return _f32(like, mask.shape[0])

    @torch.library.register_fake("r3hf::packed_token_rewards")
    def _(scores, response_mask, cu_seqlens, logprobs, ref_logprobs, kl_coef, kl_estimator, kl_clamp, first,
          beta_c, reward_clip, potential=None):
        return _T(scores, response_mask)

    @torch.library.register_fake("r3hf::packed_gae")
    def _(rewards, values, response_mask, cu_seqlens, gamma, lam, bootstrap):
        return _T(rewards, response_mask), _T(rewards, response_mask)

    @torch.library.register_fake("r3hf::packed_fused_reward_gae")
    def _(hidden, weight, bias, values, response_mask, cu_seqlens, logprobs, ref_logprobs, kl_coef, kl_estimator,
          kl_clamp, gamma, lam, first, beta_c, reward_clip, bootstrap, potential_weight=None, potential_bias=None):
        return _T(hidden, response_mask), _T(hidden, response_mask), _T(hidden, response_mask)

    @torch.library.register_fake("r3hf::packed_response_region")
    def _(response_mask, cu_seqlens):
        return response_mask.new_empty((response_mask.shape[0],), dtype=torch.bool)

    @torch.library.register_fake("r3hf::packed_reward_to_go")
    def _(rewards, response_mask, cu_seqlens, gamma, holes):
        return _T(rewards, response_mask)

    @torch.library.register_fake("r3hf::packed_group_row_pass")
    def _(rewards, response_mask, cu_seqlens, gamma, returns_stats=True, reward_m2=True):
        return rewards.new_empty((cu_seqlens.shape[0] - 1, _N_STATS), dtype=torch.float64)

    @torch.library.register_fake("r3hf::packed_fused_reward_group_row_pass")
    def _(hidden, weight, bias, response_mask, cu_seqlens, logprobs, ref_logprobs, kl_coef, kl_estimator, kl_clamp,
          first, beta_c, reward_clip, gamma, potential_weight=None, potential_bias=None):
        return (_T(hidden, response_mask),
                hidden.new_empty((cu_seqlens.shape[0] - 1, _N_STATS), dtype=torch.float64))

    @torch.library.register_fake("r3hf::packed_group_finish")
    def _(rewards, response_mask, cu_seqlens, shift, scale, gamma, on_rewards):
        return _T(rewards, response_mask)

    # Per-position baselines (issue 21): (stats, sums [2, n_groups, width], last), and the finish.

    def _position_outs(like, rows, n_groups, width):
        f64 = dict(dtype=torch.float64)
        return (like.new_empty((rows, _N_STATS), **f64), like.new_empty((2, n_groups, width), **f64),
                like.new_empty((rows,), **f64))

    @torch.library.register_fake("r3hf::group_position_row_pass")
    def _(rewards, response_mask, ids, n_groups, width, gamma, squares):
        return _position_outs(rewards, rewards.shape[0], n_groups, width)

    @torch.library.register_fake("r3hf::group_position_finish")
    def _(rewards, response_mask, ids, shift, scale, gamma):
        return _f32(rewards, *rewards.shape)

    @torch.library.register_fake("r3hf::packed_group_position_row_pass")
    def _(rewards, response_mask, cu_seqlens, ids, n_groups, width, gamma, squares):
        return _position_outs(rewards, cu_seqlens.shape[0] - 1, n_groups, width)

    @torch.library.register_fake("r3hf::group_position_affine")
    def _(stats, sums, last, ids, estimator, eps, scale):
        return _f32(sums, sums.shape[1], sums.shape[2]), _f32(sums, sums.shape[1], sums.shape[2])

    @torch.library.register_fake("r3hf::group_position_advantages")
    def _(rewards, response_mask, ids, n_groups, width, gamma, estimator, eps, scale):
        return _f32(rewards, *rewards.shape)

    @torch.library.register_fake("r3hf::packed_group_position_finish")
    def _(rewards, response_mask, cu_seqlens, ids, shift, scale, gamma):
        return _T(rewards, response_mask)
