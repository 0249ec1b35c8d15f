"""The bad-input battery: every argument of every public op given a wrong rank, shape, dtype,
device, type, value range, and NaN/Inf where a number is expected. Each must raise a ValueError
or TypeError whose message names the argument, on every backend that runs here (validation runs
once, before dispatch, so every backend raises the same).

NaN/Inf inside data tensors is not an error: it propagates within its row (docs/numerics.md).
"""

import math

import pytest
import torch

import r3hf.ops as ops
from backends_here import runnable
from batches import make_batch

B, L, P, D = 4, 9, 3, 8

# op -> (argument kinds in call order); defaults are filled in by _base_args.
SPECS = {
    "prefix_scores": {"hidden": "BSD", "weight": "D", "bias": "bias"},
    "redistribute": {"scores": "BS", "response_mask": "mask", "prompt_len": "prompt_len", "first": "first",
                     "beta_c": "unit"},
    "kl_penalty": {"logprobs": "BL", "ref_logprobs": "BL", "estimator": "estimator", "clamp": "range"},
    "token_rewards": {"scores": "BS", "response_mask": "mask", "prompt_len": "prompt_len", "logprobs": "BL",
                      "ref_logprobs": "BL", "kl_coef": "finite", "kl_estimator": "estimator", "kl_clamp": "range",
                      "first": "first", "beta_c": "unit", "reward_clip": "range"},
    "gae": {"rewards": "BL", "values": "BL", "response_mask": "mask", "gamma": "unit", "lam": "unit",
            "bootstrap": "bootstrap"},
    "masked_whiten": {"x": "BL", "mask": "mask", "shift_mean": "bool", "unbiased": "bool", "eps": "nonneg"},
    "fused_reward_gae": {"hidden": "BSD", "weight": "D", "bias": "bias", "values": "BL", "response_mask": "mask",
                         "prompt_len": "prompt_len", "logprobs": "BL", "ref_logprobs": "BL", "kl_coef": "finite",
                         "kl_estimator": "estimator", "kl_clamp": "range", "gamma": "unit", "lam": "unit",
                         "first": "first", "beta_c": "unit", "reward_clip": "range", "bootstrap": "bootstrap"},
    "reward_to_go": {"rewards": "BL", "response_mask": "mask", "gamma": "unit", "holes": "holes"},
    "group_advantages": {"rewards": "BL", "response_mask": "mask", "index": "index", "estimator": "group_estimator",
                         "gamma": "unit", "eps": "positive", "scale": "scale"},
    "fused_reward_group_advantages": {
        "hidden": "BSD", "weight": "D", "bias": "bias", "response_mask": "mask", "prompt_len": "prompt_len",
        "index": "index", "estimator": "group_estimator", "logprobs": "BL", "ref_logprobs": "BL", "kl_coef": "finite",
        "kl_estimator": "estimator", "kl_clamp": "range", "first": "first", "beta_c": "unit", "reward_clip": "range",
        "gamma": "unit", "eps": "positive", "scale": "scale"},
}
GROUP_OPS = ("group_advantages", "fused_reward_group_advantages")
# A separate potential (issue 24)
for _op in ("redistribute", "token_rewards"):
    SPECS[_op]["potential"] = "BS"
for _op in ("fused_reward_gae", "fused_reward_group_advantages"):
    SPECS[_op].update(potential_weight="D", potential_bias="bias")
# The group baseline (issue 21)
for _op in GROUP_OPS:
    SPECS[_op]["baseline"] = "baseline"


def _base_args(op):
    b = make_batch(B=B, L=L, P=P, D=D, per_row_prompt=True, seed=5, empty_rows=False)
    b["response_mask"][:, :2] = True
    pool = dict(
        hidden=b["hidden"], weight=b["weight"][None], bias=0.5, scores=b["scores"], response_mask=b["response_mask"],
        prompt_len=b["prompt_len"], first="prompt", beta_c=0.9, logprobs=b["logprobs"],
        ref_logprobs=b["ref_logprobs"], estimator="k3", clamp=(-1.0, 2.0), kl_coef=0.1, kl_estimator="k1",
        kl_clamp=5.0, reward_clip=3.0, rewards=b["rewards"], values=b["values"], gamma=0.99, lam=0.95,
        bootstrap=0.25, x=b["values"], mask=b["response_mask"], shift_mean=True, unbiased=True, eps=1e-8,
        index=2, holes="discount", scale="batch",
        potential=b["scores"] + 1.0, potential_weight=b["weight"][None], potential_bias=0.25, baseline="position",
    )
    if op in GROUP_OPS:
        pool["estimator"] = "grpo"
    return {name: pool[name] for name in SPECS[op]}


def _tensor_mutations(kind, spec):
    # Changing B or L is only wrong when another argument of the op has that dimension too.
    batched = sum(k in ("BL", "BS", "BSD", "mask") for k in spec.values()) >= 2
    has_l = sum(k in ("BL", "mask") for k in spec.values()) >= 2
    muts = [
        ("rank", lambda t: t[None]),
        ("type", lambda t: t.tolist()),
        ("device", lambda t: t.to("meta")),
    ]
    if kind != "mask":
        muts.append(("dtype", lambda t: t.to(torch.int64)))
    else:
        muts.append(("dtype", lambda t: t.to(torch.complex64)))
    if kind in ("BL", "BS", "BSD", "mask") and batched:
        muts.append(("shape-B", lambda t: t[:-1]))
    if kind in ("BL", "mask") and has_l:
        muts.append(("shape-L", lambda t: t[:, :-1] if t.dim() >= 2 else t))
    if kind == "BSD":
        muts.append(("shape-D", lambda t: t[..., :-1]))
    if kind == "D":
        muts.append(("shape-D", lambda t: t[..., :-1]))
    return muts


SCALAR_MUTATIONS = {
    "unit": [("below", -0.1), ("above", 1.1), ("nan", math.nan), ("inf", math.inf), ("type", "0.5"), ("bool", True)],
    "finite": [("nan", math.nan), ("inf", -math.inf), ("type", "0.1"), ("tensor-type", [0.1])],
    "nonneg": [("negative", -1e-8), ("nan", math.nan), ("type", "1e-8")],
    "first": [("unknown", "last"), ("type", 1)],
    "estimator": [("unknown", "k4"), ("type", 3)],
    "range": [("reversed", (2.0, 1.0)), ("negative", -1.0), ("nan", math.nan), ("nan-bound", (math.nan, 1.0)),
              ("triple", (0.0, 1.0, 2.0)), ("type", "1")],
    "bool": [("int", 1), ("str", "yes")],
    "bias": [("nan", math.nan), ("type", "1"), ("shape", torch.zeros(2)), ("dtype", torch.zeros(1, dtype=torch.long)),
             ("device", torch.zeros(1, device="meta"))],
    "bootstrap": [("nan", math.nan), ("type", "0"), ("shape", torch.zeros(B + 1)),
                  ("dtype", torch.zeros(B, dtype=torch.long)), ("device", torch.zeros(B, device="meta"))],
    "prompt_len": [("negative", -1), ("too-large", 100), ("zero-with-prompt", 0), ("float", 2.0), ("bool", True),
                   ("float-tensor", torch.ones(B)), ("shape", torch.ones(B + 1, dtype=torch.long)),
                   ("row-too-large", torch.tensor([1, 2, 100, 1]))],
    "index": [("zero", 0), ("not-dividing", 3), ("bool", True), ("type", "2"), ("list", [0, 0, 1, 1]),
              ("float-tensor", torch.zeros(B)), ("bool-tensor", torch.zeros(B, dtype=torch.bool)),
              ("shape", torch.zeros(B + 1, dtype=torch.long)), ("device", torch.zeros(B, dtype=torch.long, device="meta"))],
    "group_estimator": [("unknown", "ppo"), ("kl-name", "k1"), ("type", 1)],
    "positive": [("zero", 0.0), ("negative", -1e-6), ("nan", math.nan), ("inf", math.inf), ("type", "1e-6")],
    "scale": [("unknown", "token"), ("type", None)],
    "holes": [("unknown", "carry"), ("type", None)],
    "baseline": [("unknown", "token"), ("type", None)],
}


def _cases():
    for op, spec in SPECS.items():
        for arg, kind in spec.items():
            if kind in SCALAR_MUTATIONS:
                for label, value in SCALAR_MUTATIONS[kind]:
                    yield pytest.param(op, arg, value, id=f"{op}-{arg}-{label}")
            else:
                for label, fn in _tensor_mutations(kind, spec):
                    yield pytest.param(op, arg, fn, id=f"{op}-{arg}-{label}")


@pytest.mark.parametrize("backend", runnable())
@pytest.mark.parametrize("op, arg, mutation", list(_cases()))
def test_bad_argument_raises_naming_it(backend, op, arg, mutation):
    args = _base_args(op)
    args[arg] = mutation(args[arg]) if callable(mutation) else mutation
    with pytest.raises((ValueError, TypeError)) as info:
        getattr(ops, op)(**args, backend=backend)
    assert arg in str(info.value), f"{arg!r} not named in: {info.value}"


def test_battery_covers_every_argument_of_every_op():
    import inspect

    for op, spec in SPECS.items():
        params = [p for p in inspect.signature(getattr(ops, op)).parameters if p != "backend"]
        # cu_seqlens (packed batches) has its own battery: tests/test_packed_validation.py
        peer_options = {"carry_masked", "transform_masked", "eps_mode", "group", "cu_seqlens"}
        assert set(params) - peer_options == set(spec), op
