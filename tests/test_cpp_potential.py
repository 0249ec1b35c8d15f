"""The C++ CPU kernels' own `potential=` (issue 24) on redistribute / token_rewards, padded and packed.

The row kernels read Φ' from `potential` and R (each row's score after its last generated token)
from `scores`, in place. Checked against the torch reference (r3hf.reference.rewards) over
T = 1, 47, 1000, holes, all-masked rows, fp32/bf16/fp16 (scores and potential in different dtypes
too), and bit for bit against the one-score kernels on the shaped row the backend used to build in
Python (Φ' everywhere, R at each row's last generated token): the same numbers as before the change.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import r3hf.ops as ops
from r3hf import reference as ref

from backends_here import runnable
from batches import TOLERANCES, make_batch
from packed_batches import packed_batch

pytestmark = pytest.mark.skipif("cpp" not in runnable(), reason="r3hf._C not built")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _plen(b):
    p = b["prompt_len"]
    return p if isinstance(p, torch.Tensor) else torch.full((b["response_mask"].shape[0],), p)


def _batch(B, L, seed, dtype=torch.float32, pot_dtype=None):
    b = make_batch(B, L, D=8, seed=seed, dtype=dtype)
    gen = torch.Generator().manual_seed(seed + 7)
    b["potential"] = torch.randn(b["scores"].shape, generator=gen).to(pot_dtype or dtype)
    b["response_mask"][1] = False  # an all-masked row
    if L > 6:
        b["response_mask"][2, 2:5] = False  # a hole
        b["response_mask"][3, :] = True  # one contiguous run up to the end
    return b


def _shaped_padded(scores, potential, mask, prompt_len):
    """The shaped score row (the C++ backend's former Python-side copy): Φ' in float32, R at each
    row's last generated token."""
    out = potential.float().clone()
    for b in range(mask.shape[0]):
        gen = mask[b].nonzero()
        if len(gen):
            t = int(prompt_len[b]) + int(gen[-1])
            out[b, t] = scores[b, t].float()
    return out


def _shaped_packed(scores, potential, mask, cu):
    out = potential.float().clone()
    for i in range(cu.numel() - 1):
        gen = mask[cu[i]:cu[i + 1]].nonzero()
        if len(gen):
            t = int(cu[i]) + int(gen[-1])
            out[t] = scores[t].float()
    return out


def _close(got, want, dtype):
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


KW = [
    dict(first="prompt", beta_c=1.0),
    dict(first="zero", beta_c=0.3),
    dict(first="prompt", beta_c=0.0, reward_clip=1.5),
    dict(first="prompt", beta_c=0.7, kl_coef=0.1, kl_estimator="k3", kl_clamp=(-2.0, 2.0)),
]


@pytest.mark.parametrize("L", [1, 47, 1000])
@pytest.mark.parametrize("dtype,pot_dtype", [(d, d) for d in DTYPES] + [(torch.bfloat16, torch.float32),
                                                                        (torch.float32, torch.float16)])
@pytest.mark.parametrize("kw", KW, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_padded_matches_reference_and_former_bits(L, dtype, pot_dtype, kw):
    b = _batch(B=5, L=L, seed=L + 11, dtype=dtype, pot_dtype=pot_dtype)
    s, m, p, pot = b["scores"], b["response_mask"], b["prompt_len"], b["potential"]
    kl = {}
    if "kl_coef" in kw:
        kl = dict(logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"])
    keep = {k: v.clone() for k, v in dict(s=s, m=m, pot=pot).items()}
    got = ops.token_rewards(s, m, p, potential=pot, backend="cpp", **kw, **kl)
    rk = dict(kw)
    clip = rk.pop("reward_clip", None)
    want = ref.token_rewards(s, m, _plen(b), kl.get("logprobs"), kl.get("ref_logprobs"), rk.pop("kl_coef", 0.0),
                             rk.pop("kl_estimator", "k1"), rk.pop("kl_clamp", None), rk["first"], rk["beta_c"],
                             None if clip is None else (-clip, clip), potential=pot)
    _close(got, want, torch.float32 if dtype == pot_dtype == torch.float32 else torch.bfloat16)
    # Bit for bit the one-score kernel on the shaped row (the former implementation).
    before = ops.token_rewards(_shaped_padded(s, pot, m, _plen(b)), m, p, backend="cpp", **kw, **kl)
    assert torch.equal(got, before)
    for k, v in dict(s=s, m=m, pot=pot).items():
        assert torch.equal(v, keep[k]), f"{k} was modified"
    if "kl_coef" not in kw and clip is None:
        red = ops.redistribute(s, m, p, first=kw["first"], beta_c=kw["beta_c"], potential=pot, backend="cpp")
        assert torch.equal(red, got)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta_c", [1.0, 0.3, 0.0])
def test_potential_equal_scores_is_bitwise_no_potential(dtype, beta_c):
    for L in (1, 47, 1000):
        b = _batch(B=5, L=L, seed=L, dtype=dtype)
        s, m, p = b["scores"], b["response_mask"], b["prompt_len"]
        kw = dict(logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.05, beta_c=beta_c,
                  reward_clip=3.0)
        base = ops.token_rewards(s, m, p, backend="cpp", **kw)
        assert torch.equal(ops.token_rewards(s, m, p, potential=s, backend="cpp", **kw), base)
        assert torch.equal(ops.token_rewards(s, m, p, potential=s.clone(), backend="cpp", **kw), base)


@pytest.mark.parametrize("first", ["prompt", "zero"])
@pytest.mark.parametrize("dtype,pot_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float16)])
def test_packed_equals_padded_bitwise_and_reference(first, dtype, pot_dtype):
    from r3hf.reference.packed import Packing

    for N, seed in itertools.product((1, 9, 40), (0, 1)):
        b = packed_batch(N, 47, seed=seed, D=8)
        cu, m = b["cu_seqlens"], b["response_mask"]
        s = b["scores"].to(dtype)
        pot = torch.randn(s.shape, generator=torch.Generator().manual_seed(seed + 3)).to(pot_dtype)
        if first == "zero" and N > 1:  # a sequence that starts with a generated token (no prompt)
            m = m.clone()
            m[cu[1]] = True
        keep = (s.clone(), pot.clone(), m.clone())
        kw = dict(logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.1, first=first, beta_c=0.6)
        got = ops.token_rewards(s, m, cu_seqlens=cu, potential=pot, backend="cpp", **kw)
        pk = Packing(cu, m)
        rows = ops.token_rewards(pk.sequences(s), pk.rows(m), pk.prompt_len, potential=pk.sequences(pot),
                                 logprobs=pk.rows(b["logprobs"]), ref_logprobs=pk.rows(b["ref_logprobs"]),
                                 kl_coef=0.1, first=first, beta_c=0.6, backend="cpp")
        assert torch.equal(got, pk.unpack(rows))
        want = ref.token_rewards(s, m, None, b["logprobs"], b["ref_logprobs"], 0.1, "k1", None, first, 0.6,
                                 cu_seqlens=cu, potential=pot)
        _close(got, want, torch.float32 if dtype == pot_dtype == torch.float32 else torch.bfloat16)
        before = ops.token_rewards(_shaped_packed(s, pot, m, cu), m, cu_seqlens=cu, backend="cpp", **kw)
        assert torch.equal(got, before)
        red = ops.redistribute(s, m, cu_seqlens=cu, potential=pot, first=first, beta_c=0.6, backend="cpp")
        assert torch.equal(red, ops.redistribute(_shaped_packed(s, pot, m, cu), m, cu_seqlens=cu, first=first,
                                                 beta_c=0.6, backend="cpp"))
        for x, y in zip((s, pot, m), keep):
            assert torch.equal(x, y)


def test_strided_potential_read_as_is():
    b = _batch(B=4, L=47, seed=3)
    s, m, p = b["scores"], b["response_mask"], b["prompt_len"]
    wide = torch.randn(s.shape[0], 2 * s.shape[1], generator=torch.Generator().manual_seed(1))
    pot = wide[:, ::2]  # not contiguous
    got = ops.redistribute(s, m, p, potential=pot, backend="cpp")
    assert torch.equal(got, ops.redistribute(s, m, p, potential=pot.contiguous(), backend="cpp"))


def test_direct_op_checks_the_potential():
    """The op itself (without r3hf.ops' validation) refuses a potential of another shape."""
    b = _batch(B=4, L=9, seed=2)
    s, m = b["scores"], b["response_mask"]
    p = _plen(b)
    with pytest.raises(ValueError, match="potential must have the shape of scores"):
        torch.ops.r3hf.redistribute(s, m, p, "prompt", 1.0, s[:, :-1])
    with pytest.raises(ValueError, match="potential must have the shape of scores"):
        torch.ops.r3hf.token_rewards(s, m, p, None, None, 0.0, "k1", None, "prompt", 1.0, None, s[:3])
    cu = torch.tensor([0, 4, 9])
    with pytest.raises(ValueError, match=r"potential must be \[T\] = \[9\] in packed mode"):
        torch.ops.r3hf.packed_token_rewards(torch.randn(9), m[0], cu, None, None, 0.0, "k1", None, "zero", 1.0, None,
                                            torch.randn(8))
    # No potential argument: the former schema's calls still work.
    assert torch.equal(torch.ops.r3hf.redistribute(s, m, p, "prompt", 1.0),
                       torch.ops.r3hf.redistribute(s, m, p, "prompt", 1.0, None))
