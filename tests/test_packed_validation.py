"""Bad packed input (issue 16 part 4): every op raises a ValueError/TypeError naming the argument.

cu_seqlens must be an int32/int64 tensor [N + 1] on the data's device with cu[0] = 0, non-decreasing
entries and cu[N] = T; prompt_len goes with padded calls only; per-sequence arguments (bootstrap,
index) are [N]; per-token tensors are [T]; hidden is [T, D] or [1, T, D]; first="prompt" needs a
prompt token before each sequence's first generated token (PACKED_CONTRACT.md).
"""

from __future__ import annotations

import inspect

import pytest
import torch

import r3hf.ops as ops

PACKED = "cu_seqlens" in inspect.signature(ops.gae).parameters
pytestmark = pytest.mark.skipif(not PACKED, reason="r3hf.ops takes no cu_seqlens yet (branch core-packed not merged)")

# N = 4 sequences, T = 12: [p g g g] | empty | [p p g o g] | [p g g]  (p prompt, g generated, o observation)
CU = [0, 4, 4, 9, 12]
MASK = [0, 1, 1, 1] + [] + [0, 0, 1, 0, 1] + [0, 1, 1]
T, N, D = 12, 4, 5


def batch() -> dict:
    gen = torch.Generator().manual_seed(0)
    return dict(
        cu_seqlens=torch.tensor(CU, dtype=torch.int64),
        hidden=torch.randn(T, D, generator=gen),
        weight=torch.randn(D, generator=gen),
        scores=torch.randn(T, generator=gen),
        values=torch.randn(T, generator=gen),
        rewards=torch.randn(T, generator=gen),
        logprobs=-torch.rand(T, generator=gen),
        ref_logprobs=-torch.rand(T, generator=gen),
        response_mask=torch.tensor(MASK, dtype=torch.bool),
        prompt_len=None,
        bootstrap=None,
        index=2,
    )


# op -> call(b); the packed layout's tensors and options come from b
CALLS = {
    "prefix_scores": lambda b: ops.prefix_scores(b["hidden"], b["weight"], 0.1, cu_seqlens=b["cu_seqlens"]),
    "kl_penalty": lambda b: ops.kl_penalty(b["logprobs"], b["ref_logprobs"], "k3", cu_seqlens=b["cu_seqlens"]),
    "redistribute": lambda b: ops.redistribute(b["scores"], b["response_mask"], b["prompt_len"],
                                               cu_seqlens=b["cu_seqlens"]),
    "token_rewards": lambda b: ops.token_rewards(
        b["scores"], b["response_mask"], b["prompt_len"], cu_seqlens=b["cu_seqlens"], logprobs=b["logprobs"],
        ref_logprobs=b["ref_logprobs"], kl_coef=0.1),
    "gae": lambda b: ops.gae(b["rewards"], b["values"], b["response_mask"], 1.0, 0.95, b["bootstrap"],
                             cu_seqlens=b["cu_seqlens"]),
    "masked_whiten": lambda b: ops.masked_whiten(b["values"], b["response_mask"], cu_seqlens=b["cu_seqlens"]),
    "fused_reward_gae": lambda b: ops.fused_reward_gae(
        b["hidden"], b["weight"], None, b["values"], b["response_mask"], b["prompt_len"], cu_seqlens=b["cu_seqlens"],
        logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.1, bootstrap=b["bootstrap"]),
    "reward_to_go": lambda b: ops.reward_to_go(b["rewards"], b["response_mask"], 0.9, cu_seqlens=b["cu_seqlens"]),
    "group_advantages": lambda b: ops.group_advantages(b["rewards"], b["response_mask"], b["index"], "grpo",
                                                       cu_seqlens=b["cu_seqlens"]),
    "fused_reward_group_advantages": lambda b: ops.fused_reward_group_advantages(
        b["hidden"], b["weight"], None, b["response_mask"], b["prompt_len"], b["index"], "rloo",
        cu_seqlens=b["cu_seqlens"], logprobs=b["logprobs"], ref_logprobs=b["ref_logprobs"], kl_coef=0.1),
}
# The per-token inputs of each op, by the name its errors must use (masked_whiten calls them x and mask),
# the first one being the tensor T is read from.
PER_TOKEN = {
    "prefix_scores": {"hidden": "hidden"},
    "kl_penalty": {"logprobs": "logprobs", "ref_logprobs": "ref_logprobs"},
    "redistribute": {"scores": "scores", "response_mask": "response_mask"},
    "token_rewards": {"scores": "scores", "response_mask": "response_mask", "logprobs": "logprobs",
                      "ref_logprobs": "ref_logprobs"},
    "gae": {"rewards": "rewards", "values": "values", "response_mask": "response_mask"},
    "masked_whiten": {"values": "x", "response_mask": "mask"},
    "fused_reward_gae": {"hidden": "hidden", "values": "values", "response_mask": "response_mask",
                         "logprobs": "logprobs", "ref_logprobs": "ref_logprobs"},
    "reward_to_go": {"rewards": "rewards", "response_mask": "response_mask"},
    "group_advantages": {"rewards": "rewards", "response_mask": "response_mask"},
    "fused_reward_group_advantages": {"hidden": "hidden", "response_mask": "response_mask", "logprobs": "logprobs",
                                      "ref_logprobs": "ref_logprobs"},
}
OPS = sorted(CALLS)
WITH_PROMPT = ["redistribute", "token_rewards", "fused_reward_gae", "fused_reward_group_advantages"]
WITH_HIDDEN = ["prefix_scores", "fused_reward_gae", "fused_reward_group_advantages"]


def with_(**changes) -> dict:
    b = batch()
    b.update(changes)
    return b


@pytest.mark.parametrize("op", OPS)
def test_good_batch_runs(op):
    # the batch every case below breaks in one way is itself valid (empty sequence included)
    out = CALLS[op](batch())
    for o in out if isinstance(out, tuple) else (out,):
        assert o.shape == (T,) and o.dtype == torch.float32


BAD_CU = {
    "unsorted": ([0, 4, 9, 4, 12], ValueError),
    "first entry not 0": ([1, 4, 4, 9, 12], ValueError),
    "negative entry": ([0, -1, 4, 9, 12], ValueError),
    "last entry below T": ([0, 4, 4, 9, 11], ValueError),
    "last entry above T": ([0, 4, 4, 9, 13], ValueError),
    "no sequence": ([0], ValueError),
}


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", sorted(BAD_CU))
def test_bad_cu_seqlens_values(op, case):
    cu, exc = BAD_CU[case]
    b = batch()
    if case == "no sequence":
        # T = 0 so that only the missing sequence is wrong
        b = {k: (v[:0] if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == T else v)
             for k, v in b.items()}
    b["cu_seqlens"] = torch.tensor(cu, dtype=torch.int64)
    with pytest.raises(exc, match="cu_seqlens"):
        CALLS[op](b)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bool, torch.int16, torch.uint8])
def test_cu_seqlens_wrong_dtype(op, dtype):
    cu = torch.tensor(CU).to(dtype) if dtype != torch.bool else torch.tensor([0, 1, 1, 1, 1], dtype=torch.bool)
    with pytest.raises(TypeError, match="cu_seqlens"):
        CALLS[op](with_(cu_seqlens=cu))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("form", ["2-D", "0-D", "list"])
def test_cu_seqlens_wrong_form(op, form):
    cu = {"2-D": torch.tensor([CU]), "0-D": torch.tensor(12), "list": list(CU)}[form]
    with pytest.raises(TypeError if form == "list" else ValueError, match="cu_seqlens"):
        CALLS[op](with_(cu_seqlens=cu))


@pytest.mark.parametrize("op", WITH_PROMPT)
@pytest.mark.parametrize("prompt_len", [1, "tensor"])
def test_prompt_len_with_cu_seqlens(op, prompt_len):
    prompt_len = torch.ones(N, dtype=torch.int64) if prompt_len == "tensor" else prompt_len
    with pytest.raises(ValueError, match="prompt_len"):
        CALLS[op](with_(prompt_len=prompt_len))


def test_prompt_len_missing_without_cu_seqlens():
    B, L, S = 2, 3, 5
    scores, mask, hidden = torch.randn(B, S), torch.ones(B, L, dtype=torch.bool), torch.randn(B, S, D)
    calls = [
        lambda: ops.redistribute(scores, mask),
        lambda: ops.redistribute(scores, mask, None),
        lambda: ops.token_rewards(scores, mask, None),
        lambda: ops.fused_reward_gae(hidden, torch.randn(D), None, torch.randn(B, L), mask, None),
        lambda: ops.fused_reward_group_advantages(hidden, torch.randn(D), None, mask, None, 2),
    ]
    for call in calls:
        with pytest.raises((ValueError, TypeError), match="prompt_len"):
            call()


@pytest.mark.parametrize("op", ["group_advantages", "fused_reward_group_advantages"])
@pytest.mark.parametrize("index", ["N + 1 ids", "N - 1 ids", "2-D ids", "G not dividing N"])
def test_index_not_per_sequence(op, index):
    index = {"N + 1 ids": torch.arange(N + 1), "N - 1 ids": torch.arange(N - 1),
             "2-D ids": torch.arange(N)[None], "G not dividing N": 3}[index]
    with pytest.raises(ValueError, match="index"):
        CALLS[op](with_(index=index))


@pytest.mark.parametrize("op", ["group_advantages", "fused_reward_group_advantages"])
def test_index_of_length_T_is_not_per_sequence(op):
    # a per-token index (length T) is a common mistake; it is not [N]
    with pytest.raises(ValueError, match="index"):
        CALLS[op](with_(index=torch.zeros(T, dtype=torch.int64)))


@pytest.mark.parametrize("op", ["gae", "fused_reward_gae"])
@pytest.mark.parametrize("length", [N + 1, N - 1, T])
def test_bootstrap_not_per_sequence(op, length):
    with pytest.raises(ValueError, match="bootstrap"):
        CALLS[op](with_(bootstrap=torch.zeros(length)))


@pytest.mark.parametrize("op,key", [(op, key) for op in OPS for key in PER_TOKEN[op]])
@pytest.mark.parametrize("change", ["shorter", "longer"])
def test_per_token_tensor_wrong_length(op, key, change):
    b = batch()
    t = b[key]
    b[key] = t[:-1] if change == "shorter" else torch.cat([t, t[:1]])
    name = PER_TOKEN[op][key]
    # The tensor T is read from may be reported through cu_seqlens' last entry; any other by its name.
    match = rf"\b{name}\b" if key != next(iter(PER_TOKEN[op])) else rf"\b{name}\b|cu_seqlens"
    with pytest.raises(ValueError, match=match):
        CALLS[op](b)


@pytest.mark.parametrize("op", OPS)
def test_per_token_tensor_with_a_batch_dimension(op):
    # a padded-looking [1, T] per-token tensor is not [T]; hidden is the one input allowed a leading 1
    key = next((k for k in PER_TOKEN[op] if k != "hidden"), None)
    if key is None:
        pytest.skip(f"{op} has no per-token input besides hidden")
    b = batch()
    b[key] = b[key][None]
    with pytest.raises(ValueError, match=rf"\b{PER_TOKEN[op][key]}\b"):
        CALLS[op](b)


@pytest.mark.parametrize("op", WITH_HIDDEN)
@pytest.mark.parametrize("shape", ["[T]", "[2, T, D]", "[1, 1, T, D]"])
def test_hidden_wrong_rank(op, shape):
    h = batch()["hidden"]
    h = {"[T]": h[:, 0], "[2, T, D]": torch.stack([h, h]), "[1, 1, T, D]": h[None, None]}[shape]
    with pytest.raises(ValueError, match="hidden"):
        CALLS[op](with_(hidden=h))


@pytest.mark.parametrize("op", WITH_PROMPT)
def test_first_prompt_with_a_generated_first_token(op):
    # sequence 2 = [g g o g]: no prompt token to read the prompt-only score from (padded: prompt_len 0)
    mask = torch.tensor(MASK, dtype=torch.bool)
    mask[4] = True
    with pytest.raises(ValueError, match="first"):
        CALLS[op](with_(response_mask=mask))


@pytest.mark.parametrize("op", WITH_PROMPT)
def test_first_zero_allows_a_generated_first_token(op):
    mask = torch.tensor(MASK, dtype=torch.bool)
    mask[4] = True
    b = with_(response_mask=mask)
    call = {
        "redistribute": lambda: ops.redistribute(b["scores"], mask, None, cu_seqlens=b["cu_seqlens"], first="zero"),
        "token_rewards": lambda: ops.token_rewards(b["scores"], mask, None, cu_seqlens=b["cu_seqlens"], first="zero"),
        "fused_reward_gae": lambda: ops.fused_reward_gae(b["hidden"], b["weight"], None, b["values"], mask, None,
                                                         cu_seqlens=b["cu_seqlens"], first="zero"),
        "fused_reward_group_advantages": lambda: ops.fused_reward_group_advantages(
            b["hidden"], b["weight"], None, mask, None, 2, cu_seqlens=b["cu_seqlens"], first="zero"),
    }[op]
    out = call()
    assert (out if isinstance(out, torch.Tensor) else out[0]).shape == (T,)


@pytest.mark.parametrize("op", WITH_PROMPT)
def test_first_prompt_allows_empty_and_all_prompt_sequences(op):
    # no generated token means no baseline to read: an empty sequence first, an all-prompt one last
    cu = torch.tensor([0, 0, 4, 4, 9, 12])
    mask = torch.tensor([0, 1, 1, 1] + [0, 0, 1, 0, 1] + [0, 0, 0], dtype=torch.bool)
    out = CALLS[op](with_(cu_seqlens=cu, response_mask=mask, index=torch.tensor([0, 0, 1, 1, 1])))
    out = out if isinstance(out, torch.Tensor) else out[0]
    assert out.shape == (T,) and not out[:1].any() and not out[9:].any()


@pytest.mark.parametrize("op", OPS)
def test_cu_seqlens_on_another_device_meta(op):
    # the meta device stands in for a GPU here: a device mismatch, reported before any value is read
    with pytest.raises(ValueError, match="cu_seqlens"):
        CALLS[op](with_(cu_seqlens=torch.tensor(CU).to("meta")))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: cu_seqlens on the GPU, data on the CPU")
@pytest.mark.parametrize("op", OPS)
def test_cu_seqlens_on_another_device_cuda(op):
    with pytest.raises(ValueError, match="cu_seqlens"):
        CALLS[op](with_(cu_seqlens=torch.tensor(CU).cuda()))
