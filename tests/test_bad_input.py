"""Every bad input of issue 2 raises a ValueError/TypeError whose message names the argument."""

import pytest
import torch

import r3hf.ops as ops
from batches import make_batch

B, L, P, D = 4, 37, 5, 8


@pytest.fixture
def b():
    return make_batch(B=B, L=L, P=P, D=D, per_row_prompt=False, seed=1)


CASES = [
    # (op, overrides, exception, words the message must contain)
    ("gae", dict(values=lambda b: b["values"][:, :-1]), ValueError, ["values must be [B, L] = [4, 37], got [4, 36]"]),
    ("gae", dict(values=lambda b: b["values"][None]), ValueError, ["values"]),
    ("gae", dict(rewards=lambda b: b["rewards"][0]), ValueError, ["rewards", "2 dimensions"]),
    ("gae", dict(rewards=lambda b: b["rewards"].long()), TypeError, ["rewards", "floating"]),
    ("gae", dict(response_mask=lambda b: b["response_mask"][:, :3]), ValueError, ["response_mask"]),
    ("gae", dict(gamma=1.5), ValueError, ["gamma", "[0, 1]"]),
    ("gae", dict(lam=-0.1), ValueError, ["lam", "[0, 1]"]),
    ("gae", dict(gamma="0.9"), TypeError, ["gamma"]),
    ("gae", dict(bootstrap=lambda b: torch.zeros(B + 1)), ValueError, ["bootstrap"]),
    ("gae", dict(rewards=lambda b: b["rewards"].to("meta")), ValueError, ["device"]),
    ("gae", dict(backend="cuda"), ValueError, ["backend"]),
    ("redistribute", dict(prompt_len=40), ValueError, ["S = 45 < prompt_len + L = 40 + 37"]),
    ("redistribute", dict(prompt_len=0), ValueError, ["prompt_len", "first='prompt'"]),
    ("redistribute", dict(prompt_len=-1, first="zero"), ValueError, ["prompt_len", ">= 0"]),
    ("redistribute", dict(prompt_len=2.0), TypeError, ["prompt_len"]),
    ("redistribute", dict(prompt_len=lambda b: torch.ones(B, dtype=torch.float32)), TypeError, ["prompt_len"]),
    ("redistribute", dict(prompt_len=lambda b: torch.ones(B + 1, dtype=torch.long)), ValueError, ["prompt_len", "[4]"]),
    ("redistribute", dict(prompt_len=lambda b: torch.tensor([1, 2, 9, 1])), ValueError, ["S = 45 < prompt_len + L = 9 + 37"]),
    ("redistribute", dict(first="last"), ValueError, ["first", "'prompt'"]),
    ("redistribute", dict(beta_c=2.0), ValueError, ["beta_c"]),
    ("redistribute", dict(scores=lambda b: b["scores"].int()), TypeError, ["scores"]),
    ("redistribute", dict(response_mask=lambda b: b["response_mask"][:2]), ValueError, ["response_mask", "B = 4"]),
    ("kl_penalty", dict(estimator="k4"), ValueError, ["estimator", "k4"]),
    ("kl_penalty", dict(ref_logprobs=lambda b: b["ref_logprobs"][:, 1:]), ValueError, ["ref_logprobs"]),
    ("kl_penalty", dict(clamp=(1.0, -1.0)), ValueError, ["clamp", "low <= high"]),
    ("kl_penalty", dict(clamp=-1.0), ValueError, ["clamp"]),
    ("kl_penalty", dict(clamp=(0, 1, 2)), ValueError, ["clamp"]),
    ("token_rewards", dict(kl_coef=0.1, ref_logprobs=None), ValueError, ["ref_logprobs", "kl_coef"]),
    ("token_rewards", dict(kl_coef=0.1, logprobs=None), ValueError, ["logprobs", "kl_coef"]),
    ("token_rewards", dict(kl_coef=0.1, kl_estimator="kl"), ValueError, ["kl_estimator"]),
    ("token_rewards", dict(kl_coef=0.1, logprobs=lambda b: b["logprobs"][:, :5]), ValueError, ["logprobs"]),
    ("token_rewards", dict(kl_coef=float("nan")), ValueError, ["kl_coef"]),
    ("token_rewards", dict(reward_clip=(2.0, 1.0)), ValueError, ["reward_clip"]),
    ("prefix_scores", dict(weight=lambda b: b["weight"][:-1]), ValueError, ["weight", "D = 8"]),
    ("prefix_scores", dict(hidden=lambda b: b["hidden"][0]), ValueError, ["hidden", "3 dimensions"]),
    ("prefix_scores", dict(bias=lambda b: torch.zeros(2)), ValueError, ["bias"]),
    ("prefix_scores", dict(bias="1"), TypeError, ["bias"]),
    ("prefix_scores", dict(hidden=lambda b: b["hidden"].to(torch.int32)), TypeError, ["hidden"]),
    ("masked_whiten", dict(mask=lambda b: b["response_mask"][:, 1:]), ValueError, ["mask", "shape of x"]),
    ("masked_whiten", dict(mask=lambda b: torch.zeros(B, L, dtype=torch.bool)), ValueError, ["mask selects 0"]),
    ("masked_whiten", dict(eps=-1.0), ValueError, ["eps"]),
    ("fused", dict(values=lambda b: b["values"][:, :-1]), ValueError, ["values must be [B, L] = [4, 37], got [4, 36]"]),
    ("fused", dict(prompt_len=9), ValueError, ["S = 45 < prompt_len + L = 9 + 37"]),
    ("fused", dict(gamma=2.0), ValueError, ["gamma"]),
    ("fused", dict(kl_coef=0.1), ValueError, ["logprobs"]),
    ("fused", dict(response_mask=lambda b: b["response_mask"].to("meta")), ValueError, ["response_mask", "device"]),
    ("fused", dict(weight=lambda b: torch.zeros(2, D)), ValueError, ["weight"]),
    ("reward_to_go", dict(holes="carry"), ValueError, ["holes", "'skip'"]),
    ("reward_to_go", dict(gamma=1.5), ValueError, ["gamma", "[0, 1]"]),
    ("reward_to_go", dict(response_mask=lambda b: b["response_mask"][:, 1:]), ValueError, ["response_mask", "[4, 37]"]),
    ("group", dict(index=lambda b: torch.zeros(B + 1, dtype=torch.long)), ValueError, ["index", "[B] = [4]", "[5]"]),
    ("group", dict(index=lambda b: torch.zeros(B)), TypeError, ["index", "integer tensor", "float32"]),
    ("group", dict(index=lambda b: torch.zeros(B, dtype=torch.long, device="meta")), ValueError, ["index", "device"]),
    ("group", dict(index=3), ValueError, ["index = 3", "divide", "4"]),
    ("group", dict(index=0), ValueError, ["index", ">= 1"]),
    ("group", dict(index=2.0), TypeError, ["index"]),
    ("group", dict(response_mask=lambda b: torch.zeros(B, L, dtype=torch.bool)), ValueError,
     ["response_mask", "no generated token"]),
    ("group", dict(response_mask=lambda b: torch.eye(B, L, dtype=torch.bool)[:, :L] & (torch.arange(B) == 0)[:, None],
                   estimator="reinforce_pp"), ValueError, ["response_mask", "1 generated token", "at least 2"]),
    ("group", dict(estimator="ppo"), ValueError, ["estimator", "'grpo'", "'rloo'"]),
    ("group", dict(gamma=-0.5), ValueError, ["gamma", "[0, 1]"]),
    ("group", dict(eps=0.0), ValueError, ["eps", "> 0"]),
    ("group", dict(scale="token"), ValueError, ["scale", "'group'"]),
    ("group", dict(estimator="rloo", scale="batch"), ValueError, ["scale='batch'", "rloo"]),
    ("group", dict(estimator="rloo", eps=1e-4), ValueError, ["eps", "unused", "rloo"]),
    ("group", dict(scale="none", eps=1e-4), ValueError, ["eps", "unused"]),
    ("group", dict(group="world"), ValueError, ["group", "not initialised"]),
    ("fused_group", dict(index=lambda b: torch.zeros(B + 1, dtype=torch.long)), ValueError, ["index"]),
    ("fused_group", dict(response_mask=lambda b: torch.zeros(B, L)), ValueError, ["response_mask", "no generated token"]),
    ("fused_group", dict(estimator="k3"), ValueError, ["estimator", "'grpo'"]),
    ("fused_group", dict(prompt_len=9), ValueError, ["S = 45 < prompt_len + L = 9 + 37"]),
]


# op -> its required arguments, as keys of the batch
REQUIRED = {
    "gae": dict(rewards="rewards", values="values", response_mask="response_mask"),
    "redistribute": dict(scores="scores", response_mask="response_mask", prompt_len="prompt_len"),
    "kl_penalty": dict(logprobs="logprobs", ref_logprobs="ref_logprobs"),
    "token_rewards": dict(scores="scores", response_mask="response_mask", prompt_len="prompt_len",
                          logprobs="logprobs", ref_logprobs="ref_logprobs"),
    "prefix_scores": dict(hidden="hidden", weight="weight", bias="bias"),
    "masked_whiten": dict(x="values", mask="response_mask"),
    "fused": dict(hidden="hidden", weight="weight", bias="bias", values="values", response_mask="response_mask",
                  prompt_len="prompt_len"),
    "reward_to_go": dict(rewards="rewards", response_mask="response_mask"),
    "group": dict(rewards="rewards", response_mask="response_mask"),
    "fused_group": dict(hidden="hidden", weight="weight", bias="bias", response_mask="response_mask",
                        prompt_len="prompt_len"),
}
# op -> (public name, arguments that are not in the batch)
PUBLIC = {"fused": ("fused_reward_gae", {}), "group": ("group_advantages", dict(index=2)),
          "fused_group": ("fused_reward_group_advantages", dict(index=2))}


def _call(op, b, over):
    name, extra = PUBLIC.get(op, (op, {}))
    args = {arg: b[key] for arg, key in REQUIRED[op].items()} | extra
    args.update({k: (v(b) if callable(v) else v) for k, v in over.items()})
    return getattr(ops, name)(**args)


@pytest.mark.parametrize("op, over, exc, words", CASES, ids=[f"{c[0]}-{'-'.join(c[1])}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_raises_a_clear_error(b, op, over, exc, words):
    with pytest.raises(exc) as info:
        _call(op, b, over)
    for w in words:
        assert w in str(info.value), f"{w!r} not in {str(info.value)!r}"


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_unavailable_backend_says_why(b, backend):
    # No compiled backend runs on the meta device, so an explicit request must say why, not fall back.
    meta = {k: b[k].to("meta") for k in ("rewards", "values", "response_mask")}
    with pytest.raises(ops.BackendUnavailableError, match=f"backend='{backend}' cannot run gae on meta: .+"):
        ops.gae(meta["rewards"], meta["values"], meta["response_mask"], backend=backend)
