"""The peer-convention options of ops.gae / ops.masked_whiten and their dispatch.

gae(carry_masked=True) is veRL's recorded value at masked positions; masked_whiten's
transform_masked (veRL, OpenRLHF) and eps_mode="max" (OpenRLHF). Defaults are unchanged, and a
backend that does not declare an option is never handed it.
"""

import types

import pytest
import torch

from r3hf import _dispatch, ops

from batches import make_batch


def test_carry_masked_hand_computed():
    r = torch.tensor([[1.0, 2.0, 3.0]])
    v = torch.tensor([[0.5, 9.0, 0.25]])
    m = torch.tensor([[True, False, True]])
    adv, ret = ops.gae(r, v, m, 1.0, 1.0, carry_masked=True)
    assert adv.tolist() == [[3.5, 2.75, 2.75]]
    assert ret.tolist() == [[4.0, 11.75, 3.0]]
    adv0, ret0 = ops.gae(r, v, m, 1.0, 1.0)
    assert adv0.tolist() == [[3.5, 0.0, 2.75]] and ret0.tolist() == [[4.0, 0.0, 3.0]]


@pytest.mark.parametrize("L", [1, 47, 300])
def test_carry_masked_changes_only_masked_positions(L):
    b = make_batch(B=5, L=L, seed=L)
    m = b["response_mask"]
    inputs = {k: v.clone() for k, v in b.items() if isinstance(v, torch.Tensor)}
    adv, ret = ops.gae(b["rewards"], b["values"], m, 0.99, 0.9, bootstrap=0.3)
    adv_c, ret_c = ops.gae(b["rewards"], b["values"], m, 0.99, 0.9, bootstrap=0.3, carry_masked=True)
    assert torch.equal(adv[m], adv_c[m]) and torch.equal(ret[m], ret_c[m])
    assert torch.equal(ret_c, adv_c + b["values"])
    # after a row's last generated token the carried advantage is still 0; before it, the next one's
    for row in range(5):
        idx = m[row].nonzero().flatten().tolist()
        for t in range(L):
            if m[row, t]:
                continue
            later = [u for u in idx if u > t]
            expect = adv[row, later[0]] if later else torch.tensor(0.0)
            assert adv_c[row, t] == expect
    for k, v in inputs.items():
        assert torch.equal(v, b[k])


def test_transform_masked_and_eps_mode():
    b = make_batch(B=4, L=47, seed=1)
    x, m = b["values"], b["response_mask"]
    plain = ops.masked_whiten(x, m)
    full = ops.masked_whiten(x, m, transform_masked=True)
    assert torch.equal(plain[m], full[m])
    sel = x[m].double()
    mean, var = sel.mean(), sel.var(unbiased=True)
    want = ((x.double() - mean) / torch.sqrt(var + 1e-8)).float()
    torch.testing.assert_close(full, want, atol=1e-5, rtol=1e-5)
    # eps_mode: rsqrt(max(var, eps)) vs rsqrt(var + eps) only differ when var is near eps
    tiny = 1e-5 * x  # var ~1e-10 < eps
    a = ops.masked_whiten(tiny, m, unbiased=False, eps_mode="max")
    c = ops.masked_whiten(tiny, m, unbiased=False)
    var_t = tiny[m].double().var(unbiased=False)
    want_a = torch.where(m, (tiny.double() - tiny[m].double().mean()) / torch.sqrt(var_t.clamp_min(1e-8)), 0.0)
    torch.testing.assert_close(a, want_a.float(), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(a, c, rtol=1e-3)


def test_option_bad_input():
    z, m = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(TypeError, match="carry_masked"):
        ops.gae(z, z, m, carry_masked=1)
    with pytest.raises(TypeError, match="transform_masked"):
        ops.masked_whiten(z, m, transform_masked="yes")
    with pytest.raises(ValueError, match="eps_mode"):
        ops.masked_whiten(z, m, eps_mode="clamp")


def _fake_backend(options):
    calls = []

    def gae(**kwargs):
        calls.append(sorted(kwargs))
        return ops.gae(**{k: v for k, v in kwargs.items() if k not in ("response_mask",)},
                       response_mask=kwargs["response_mask"], backend="torch")

    module = types.SimpleNamespace(
        OPS=("gae",), OPTIONS=options, unavailable_reason=lambda device: None, gae=gae, describe=lambda: "fake"
    )
    return module, calls


@pytest.mark.parametrize("declares", [False, True])
def test_options_reach_only_backends_that_declare_them(monkeypatch, declares):
    module, calls = _fake_backend({"gae": ("carry_masked",)} if declares else {})
    real_load = _dispatch.load
    monkeypatch.setattr(_dispatch, "load", lambda name: (module, "fake") if name == "cpp" else real_load(name))
    b = make_batch(B=3, L=7, seed=2)
    args = (b["rewards"], b["values"], b["response_mask"], 0.9, 0.9)
    ops.gae(*args)  # default call: the fake backend gets the usual arguments, no option
    assert calls == [sorted(["rewards", "values", "response_mask", "gamma", "lam", "bootstrap"])]
    want = ops.gae(*args, carry_masked=True, backend="torch")
    got = ops.gae(*args, carry_masked=True)  # auto
    assert torch.equal(got[0], want[0])
    assert len(calls) == (2 if declares else 1)  # without the declaration auto fell back to torch
    if declares:
        assert "carry_masked" in calls[-1]
        ops.gae(*args, carry_masked=True, backend="cpp")
    else:
        with pytest.raises(ops.BackendUnavailableError, match="carry_masked"):
            ops.gae(*args, carry_masked=True, backend="cpp")
