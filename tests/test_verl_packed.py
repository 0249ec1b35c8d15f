"""r3hf.integrations.verl.packed against veRL 0.9.1's own packing functions (skipped without veRL).

Batches are made in veRL's padded layout and packed by veRL itself (`left_right_2_no_padding`,
which calls its `unpad_input`); model outputs are turned into response tensors by veRL's
`no_padding_2_padding` and `response_from_nested`. Rewards are checked against scoring every
truncation with a tiny reward model (GPT-2 built from a config, run packed on veRL's stream as its
engine runs it: position ids restart per sequence, no attention mask) and against the padded
`r3hf.integrations.verl.token_level_rewards` on veRL's `pad_input` of the same scores.
CI installs veRL 0.9.1 (.ci/steps/40-verl.sh).
"""

import pytest
import torch

from r3hf.integrations import verl as padded_adapter
from r3hf.integrations.verl import packed as adapter

from peer_batches import assert_close, logprobs, randn
from verl_harness import import_verl as _import

padding = _import("verl.workers.utils.padding")
attention_utils = _import("verl.utils.attention_utils")
TensorDict = _import("tensordict").TensorDict

VOCAB = 50


def _batch(B, P, L, seed, lead_hole=False):
    """veRL's padded batch: left-padded prompts [B, P], right-padded responses [B, L], masks, ids.

    Row kinds cycle: full response, multi-turn (observation span inside), empty response, one
    token, truncated at L. Prompt lengths are 1 .. P. lead_hole: row 0's response starts with an
    observation token (response_mask 0).
    """
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (B, P + L), generator=gen)
    attn = torch.zeros(B, P + L, dtype=torch.int64)
    rmask = torch.zeros(B, L, dtype=torch.int64)
    for b in range(B):
        p = 1 + int(torch.randint(0, P, (1,), generator=gen))
        kind = b % 5
        r = {0: int(torch.randint(1, L + 1, (1,), generator=gen)), 1: L, 2: 0, 3: 1, 4: L}[kind]
        attn[b, P - p:P] = 1
        attn[b, P:P + r] = 1
        rmask[b, :r] = 1
        if kind == 1 and r > 3:
            rmask[b, 1:r - 1] = 0
            rmask[b, r // 2] = 1
    if lead_hole and rmask[0].sum() > 1:
        rmask[0, 0] = 0
    ids = ids * attn  # pad id 0
    position_ids = (attn.cumsum(1) - 1).clamp_min(0)
    return TensorDict(
        {"input_ids": ids, "attention_mask": attn, "response_mask": rmask, "position_ids": position_ids,
         "prompts": ids[:, :P].clone(), "responses": ids[:, P:].clone()},
        batch_size=[B],
    )


def _packed(td):
    """veRL's own packing of the batch: (its no-padding TensorDict, indices of unpad_input)."""
    unpadded = padding.left_right_2_no_padding(td.clone())
    _, indices, *_ = attention_utils.unpad_input(td["input_ids"].unsqueeze(-1), td["attention_mask"])
    return unpadded, indices


CASES = [(1, 2, 1), (3, 2, 5), (5, 4, 7), (7, 3, 12)]  # (B, P, L)


@pytest.mark.parametrize("B,P,L", CASES)
def test_layout_and_unpack_equal_verls(B, P, L):
    td = _batch(B, P, L, seed=B + 10 * L)
    unpadded, _ = _packed(td)
    cu = unpadded["input_ids"].offsets()
    layout = adapter.packed_layout(unpadded)
    assert torch.equal(layout.cu_seqlens, cu.to(torch.int64)) and layout.response_length == L
    T = int(cu[-1])
    gen = torch.Generator().manual_seed(1)
    for out in (randn(T, gen=gen), randn(T, 3, gen=gen)):  # a [T] output, and one with a trailing dim
        nested = torch.nested.nested_tensor_from_jagged(out, offsets=cu)
        want = padding.no_padding_2_padding(nested, unpadded)
        assert_close(adapter.unpack_responses(nested, unpadded, shift=1), want, "nested, shift=1")
        assert_close(adapter.unpack_responses(out, layout, shift=1), want, "[T], shift=1")
        # and the reverse: every position veRL reads comes back, the rest is 0
        back = adapter.pack_responses(want, layout, shift=1)
        read = adapter.pack_responses(torch.ones(B, L), layout, shift=1) != 0
        assert torch.equal(back[read], out[read]) and not back[~read].any()


@pytest.mark.parametrize("B,P,L", CASES)
def test_nested_engine_layout_equals_response_from_nested(B, P, L):
    """The v1 trainer's path: nested outputs and a nested response_mask (`response_from_nested`)."""
    td = _batch(B, P, L, seed=B * L)
    unpadded, _ = _packed(td)
    cu = unpadded["input_ids"].offsets()
    resp_lens = td["attention_mask"][:, P:].sum(1)
    rmask_nested = torch.nested.as_nested_tensor([td["response_mask"][b, : int(resp_lens[b])] for b in range(B)],
                                                 layout=torch.jagged)
    out = randn(int(cu[-1]), gen=torch.Generator().manual_seed(B))
    nested = torch.nested.nested_tensor_from_jagged(out, offsets=cu)
    want = padding.response_from_nested(nested, rmask_nested).to_padded_tensor(0.0)
    layout = adapter.packed_layout(cu_seqlens=nested, response_lens=rmask_nested)
    got = adapter.unpack_responses(nested, layout, shift=1)
    assert_close(got[:, : want.shape[1]], want, "response_from_nested")
    # nested prompts/responses in the batch, as the nested engine keeps them
    prompts = torch.nested.as_nested_tensor(
        [td["prompts"][b][td["attention_mask"][b, :P] != 0] for b in range(B)], layout=torch.jagged)
    responses = torch.nested.as_nested_tensor(
        [td["responses"][b, : int(resp_lens[b])] for b in range(B)], layout=torch.jagged)
    from_batch = adapter.packed_layout({"prompts": prompts, "responses": responses})
    assert torch.equal(from_batch.cu_seqlens, layout.cu_seqlens)
    assert torch.equal(from_batch.response_lens, layout.response_lens)
    # and pack_responses takes the nested response tensor back to the stream
    values_nested = padding.response_from_nested(nested, rmask_nested)
    assert torch.equal(adapter.pack_responses(values_nested, layout, shift=1),
                       adapter.pack_responses(want, layout, shift=1))


def test_packed_response_mask():
    td = _batch(5, 3, 7, seed=4)
    unpadded, indices = _packed(td)
    got = adapter.packed_response_mask(td["response_mask"], unpadded)
    # position by position: veRL's unpad of the full-sequence response mask
    full = torch.cat([torch.zeros_like(td["prompts"]), td["response_mask"]], dim=1)
    want = attention_utils.index_first_axis(full.reshape(-1, 1), indices).squeeze(-1) != 0
    assert got.dtype == torch.bool and torch.equal(got, want)


# --- rewards: a tiny reward model, run packed as veRL's engine runs it ---------------------------


class TinyRM(torch.nn.Module):
    """GPT-2 body + a scalar head read at every position (built from a config, nothing downloaded)."""

    def __init__(self):
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        torch.manual_seed(0)
        cfg = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=16, n_layer=2, n_head=2, use_cache=False,
                         bos_token_id=0, eos_token_id=0)
        self.body = GPT2Model(cfg).eval()
        self.head = torch.nn.Linear(16, 1)

    @torch.no_grad()
    def forward(self, ids, position_ids=None):
        h = self.body(ids[None], position_ids=None if position_ids is None else position_ids[None]).last_hidden_state
        return self.head(h)[0, :, 0]

    def packed(self, unpadded):
        """One forward over veRL's stream: position ids restart per sequence and no attention mask,
        so transformers attends within each sequence only (as flash-attn varlen does)."""
        ids, pos = unpadded["input_ids"], unpadded["position_ids"]
        return torch.nested.nested_tensor_from_jagged(self(ids.values(), pos.values()), offsets=ids.offsets())


@pytest.fixture(scope="module")
def rm():
    pytest.importorskip("transformers")
    return TinyRM()


def _truncation_rewards(rm, td, first):
    """R3HF's definition, scoring each truncation prompt ⊕ response[: j + 1] on its own."""
    B, P = td["prompts"].shape
    L = td["responses"].shape[1]
    out = torch.zeros(B, L)
    for b in range(B):
        prompt = td["prompts"][b][td["attention_mask"][b, :P] != 0]
        r = int(td["attention_mask"][b, P:].sum())
        gen = [j for j in range(r) if td["response_mask"][b, j]]

        def score(j):  # R(x, y ≤ j); j = -1: the prompt alone
            return rm(torch.cat([prompt, td["responses"][b, : j + 1]]))[-1]

        for k, j in enumerate(gen):
            phi_in = score(j - 1) if (k > 0 or first == "prompt") else torch.tensor(0.0)
            phi_out = score(gen[k + 1] - 1) if k + 1 < len(gen) else score(j)
            out[b, j] = phi_out - phi_in
    return out


@pytest.mark.parametrize("B,P,L", [(1, 2, 1), (5, 3, 7), (6, 2, 9)])
@pytest.mark.parametrize("first", ["prompt", "zero"])
@pytest.mark.parametrize("lead_hole", [False, True])
def test_prefix_rewards_equal_scoring_each_truncation(rm, B, P, L, first, lead_hole):
    td = _batch(B, P, L, seed=3 * B + L, lead_hole=lead_hole)
    unpadded, _ = _packed(td)
    scores = rm.packed(unpadded)
    inputs = scores.values().clone()
    got = adapter.packed_prefix_rewards(scores, td["response_mask"], unpadded, first=first)
    assert got.shape == (B, L) and got.dtype == torch.float32
    assert_close(got, _truncation_rewards(rm, td, first), "R3HF rewards vs scoring each truncation")
    assert torch.equal(scores.values(), inputs)
    # the final score is in the rewards: a row sums to R(x, y) − R(x, prompt) (first="prompt")
    final = adapter.unpack_responses(scores, unpadded, shift=0)
    rl = td["attention_mask"][:, P:].sum(1)
    for b in range(B):
        if td["response_mask"][b].any() and first == "prompt" and not (lead_hole and b == 0):
            before = scores.values()[int(unpadded["input_ids"].offsets()[b + 1] - rl[b]) - 1]
            torch.testing.assert_close(got[b].sum(), final[b, int(rl[b]) - 1] - before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("B,P,L", [(5, 3, 7), (7, 4, 12)])
@pytest.mark.parametrize("kl_penalty,kl_coef", [("kl", 0.0), ("low_var_kl", 0.05), ("abs", 0.2)])
@pytest.mark.parametrize("beta_c", [1.0, 0.5])
def test_prefix_rewards_equal_the_padded_adapter(B, P, L, kl_penalty, kl_coef, beta_c):
    td = _batch(B, P, L, seed=B + L)
    unpadded, indices = _packed(td)
    T = int(unpadded["input_ids"].offsets()[-1])
    gen = torch.Generator().manual_seed(L)
    scores = randn(T, gen=gen)
    lp, ref = logprobs(B, L, gen=gen), logprobs(B, L, gen=gen)
    got = adapter.packed_prefix_rewards(
        scores, td["response_mask"], unpadded, old_log_probs=lp, ref_log_prob=ref, kl_coef=kl_coef,
        kl_penalty=kl_penalty, beta_c=beta_c,
    )
    padded_scores = attention_utils.pad_input(scores[:, None], indices, B, P + L).squeeze(-1)  # veRL's pad
    want = padded_adapter.token_level_rewards(
        padded_scores, td["response_mask"], P, lp, ref, kl_coef, kl_penalty, beta_c=beta_c)
    assert_close(got, want, "packed vs padded adapter")
    packed = adapter.packed_prefix_rewards(
        scores, td["response_mask"], unpadded, old_log_probs=lp, ref_log_prob=ref, kl_coef=kl_coef,
        kl_penalty=kl_penalty, beta_c=beta_c, output="packed",
    )
    assert packed.shape == (T,)
    assert torch.equal(adapter.pack_responses(got, unpadded, shift=0), packed)


def test_verls_left_shifted_slice_drops_the_final_score(rm):
    """Why the adapter reads with shift=0: veRL's slice never contains the last token's score."""
    td = _batch(5, 3, 7, seed=1)
    unpadded, _ = _packed(td)
    scores = rm.packed(unpadded)
    cu, s = unpadded["input_ids"].offsets(), scores.values()
    verl_view = padding.no_padding_2_padding(scores, unpadded)
    ours = adapter.unpack_responses(scores, unpadded, shift=0)
    rl = td["attention_mask"][:, 3:].sum(1)
    for b in range(5):
        if rl[b] > 0:
            last = int(cu[b + 1]) - 1
            assert ours[b, int(rl[b]) - 1] == s[last]  # R(x, y)
            assert verl_view[b, int(rl[b]) - 1] == s[last - 1]


def test_bad_inputs():
    td = _batch(5, 3, 7, seed=2)
    unpadded, _ = _packed(td)
    layout = adapter.packed_layout(unpadded)
    T = int(layout.cu_seqlens[-1])
    with pytest.raises(ValueError, match="shift"):
        adapter.unpack_responses(torch.zeros(T), layout, shift=2)
    with pytest.raises(ValueError, match="T = cu_seqlens"):
        adapter.unpack_responses(torch.zeros(T + 1), layout, shift=0)
    with pytest.raises(ValueError, match="offsets"):
        adapter.unpack_responses(torch.nested.nested_tensor_from_jagged(torch.zeros(T), offsets=torch.tensor([0, T])),
                                 layout, shift=0)
    with pytest.raises(ValueError, match="responses must be"):
        adapter.pack_responses(torch.zeros(4, 7), layout, shift=0)
    with pytest.raises(ValueError, match="cu_seqlens must start at 0"):
        adapter.packed_layout(cu_seqlens=torch.tensor([1, 3]), response_lens=torch.tensor([1]))
    with pytest.raises(ValueError, match="non-decreasing"):
        adapter.packed_layout(cu_seqlens=torch.tensor([0, 3, 2]), response_lens=torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="response_lens must be in"):
        adapter.packed_layout(cu_seqlens=torch.tensor([0, 3]), response_lens=torch.tensor([4]))
    with pytest.raises(ValueError, match="cu_seqlens must be a 1-D integer"):
        adapter.packed_layout(cu_seqlens=torch.tensor([0.0, 3.0]), response_lens=torch.tensor([1]))
    with pytest.raises(ValueError, match="response_length"):
        adapter.packed_layout(cu_seqlens=torch.tensor([0, 3]), response_lens=torch.tensor([2]), response_length=1)
    with pytest.raises(ValueError, match="prompt token"):
        adapter.unpack_responses(torch.zeros(3), adapter.packed_layout(
            cu_seqlens=torch.tensor([0, 3]), response_lens=torch.tensor([3])), shift=1)
    bad_mask = td["response_mask"].clone()
    bad_mask[:, -1] = 1
    with pytest.raises(ValueError, match="past a row's response length"):
        adapter.packed_response_mask(bad_mask, layout)
    with pytest.raises(ValueError, match="old_log_probs"):
        adapter.packed_prefix_rewards(torch.zeros(T), td["response_mask"], layout, kl_coef=0.1)
    with pytest.raises(ValueError, match="output"):
        adapter.packed_prefix_rewards(torch.zeros(T), td["response_mask"], layout, output="padded")
    with pytest.raises(ValueError, match="one score per stream position"):
        adapter.packed_prefix_rewards(torch.zeros(T, 2), td["response_mask"], layout)
    with pytest.raises(ValueError, match="kl_penalty"):
        adapter.packed_prefix_rewards(torch.zeros(T), td["response_mask"], layout, kl_penalty="k9")
    with pytest.raises(ValueError, match="attention_mask"):
        adapter.packed_layout({"prompts": td["prompts"], "responses": td["responses"]})


@pytest.mark.parametrize("B,P,L", [(3, 2, 5), (7, 4, 12)])
@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95)])
def test_gae_on_the_stream_equals_verls(B, P, L, gamma, lam):
    core_algos = _import("verl.trainer.ppo.core_algos")
    td = _batch(B, P, L, seed=7 * B + L)
    unpadded, _ = _packed(td)
    cu = unpadded["input_ids"].offsets()
    T = int(cu[-1])
    gen = torch.Generator().manual_seed(B)
    critic_out = torch.nested.nested_tensor_from_jagged(randn(T, gen=gen), offsets=cu)  # the value engine's output
    scores = randn(T, gen=gen)
    rewards = adapter.packed_prefix_rewards(scores, td["response_mask"], unpadded)
    values = padding.no_padding_2_padding(critic_out, unpadded)  # what veRL's trainer hands its GAE
    mask = td["response_mask"]
    want_adv, want_ret = core_algos.compute_gae_advantage_return(rewards, values, mask, gamma, lam)
    valid = torch.arange(L)[None, :] < td["attention_mask"][:, P:].sum(1)[:, None]
    packed_rewards = adapter.packed_prefix_rewards(scores, mask, unpadded, output="packed")
    for r, v in [(rewards, critic_out), (packed_rewards, critic_out.values()), (rewards, values)]:
        adv, ret = adapter.compute_gae_advantage_return(r, v, mask, unpadded, gamma, lam)
        assert_close(adv[valid], want_adv[valid], "advantages")
        assert_close(ret[valid], want_ret[valid], "returns")
        assert not adv[~valid].any() and not ret[~valid].any()
    adv_packed, _ = adapter.compute_gae_advantage_return(packed_rewards, critic_out, mask, unpadded, gamma, lam,
                                                         output="packed")
    assert torch.equal(adapter.unpack_responses(adv_packed, unpadded, shift=0), adv)


def test_gae_bad_inputs():
    td = _batch(5, 3, 7, seed=2)
    unpadded, _ = _packed(td)
    T = int(unpadded["input_ids"].offsets()[-1])
    with pytest.raises(ValueError, match="output"):
        adapter.compute_gae_advantage_return(torch.zeros(T), torch.zeros(T), td["response_mask"], unpadded,
                                             output="padded")
    with pytest.raises(ValueError, match="values must be"):
        adapter.compute_gae_advantage_return(torch.zeros(T), torch.zeros(T, 2, 2), td["response_mask"], unpadded)
    with pytest.raises(ValueError, match="token_level_rewards must be"):
        adapter.compute_gae_advantage_return(torch.zeros(T + 1), torch.zeros(T), td["response_mask"], unpadded)


def test_prefix_rewards_with_the_nested_engines_tensors():
    """The v1 trainer keeps response_mask and log-probs nested by response: same rewards."""
    B, P, L = 6, 3, 9
    td = _batch(B, P, L, seed=11)
    unpadded, _ = _packed(td)
    cu = unpadded["input_ids"].offsets()
    T = int(cu[-1])
    gen = torch.Generator().manual_seed(3)
    scores = torch.nested.nested_tensor_from_jagged(randn(T, gen=gen), offsets=cu)
    lp, ref = logprobs(B, L, gen=gen), logprobs(B, L, gen=gen)
    rl = td["attention_mask"][:, P:].sum(1)

    def nested(x):
        return torch.nested.as_nested_tensor([x[b, : int(rl[b])] for b in range(B)], layout=torch.jagged)

    layout = adapter.packed_layout(cu_seqlens=scores, response_lens=nested(td["response_mask"]), response_length=L)
    got = adapter.packed_prefix_rewards(scores, nested(td["response_mask"]), layout, old_log_probs=nested(lp),
                                        ref_log_prob=nested(ref), kl_coef=0.1, kl_penalty="k3")
    want = adapter.packed_prefix_rewards(scores, td["response_mask"], unpadded, old_log_probs=lp, ref_log_prob=ref,
                                         kl_coef=0.1, kl_penalty="k3")
    assert torch.equal(got, want)


# --- any layout: veRL's own slicing on nested prompts/responses, and the round trip --------------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@given(st.lists(st.tuples(st.integers(1, 6), st.integers(0, 7)), min_size=1, max_size=12), st.integers(0, 2**31 - 1))
def test_any_layout_unpacks_as_verl_and_round_trips(rows, seed):
    """rows: (prompt length, response length) per sequence; empty responses included."""
    prompts = torch.nested.as_nested_tensor([torch.ones(p, dtype=torch.int64) for p, _ in rows], layout=torch.jagged)
    responses = torch.nested.as_nested_tensor([torch.ones(r, dtype=torch.int64) for _, r in rows],
                                              layout=torch.jagged)
    data = {"prompts": prompts, "responses": responses}
    layout = adapter.packed_layout(data)
    T = sum(p + r for p, r in rows)
    x = randn(T, gen=torch.Generator().manual_seed(seed))
    assert torch.equal(adapter.unpack_responses(x, layout, shift=1), padding.no_padding_2_padding(x, data))
    for shift in (0, 1):
        unpacked = adapter.unpack_responses(x, layout, shift=shift)
        back = adapter.pack_responses(unpacked, layout, shift=shift)
        read = adapter.pack_responses(torch.ones_like(unpacked, dtype=torch.bool), layout, shift=shift)
        assert int(read.sum()) == sum(r for _, r in rows)
        assert torch.equal(back[read], x[read]) and not back[~read].any()
