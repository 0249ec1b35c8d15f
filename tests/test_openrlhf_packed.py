"""OpenRLHF 0.11 `packing_samples=True`: prefix_values / packed_prefix_values / packed_dense_reward
against OpenRLHF's own RewardModel and packing code (skipped when openrlhf is not installed).

The RewardModel is OpenRLHF's (`_get_reward_model`, a tiny GPT-2 built from a config), run with
packing_samples=True through its own `unpad_and_slice_tensor` / `gather_and_pad_tensor`. Those
call flash-attn's `bert_padding` helpers, which do not install on CPU: the test binds them to
transformers' CPU equivalents of the same API (`_unpad_input`, `_pad_input`), a first-axis gather
for `index_first_axis`, and a flatten for the one `rearrange` pattern OpenRLHF uses. With no
attention mask and per-sequence position ids, transformers then attends within each packed
sequence only, as flash-attn's varlen kernels do. Results are compared with scoring each
truncation, with the same model run padded (packing_samples=False), and with the padded adapter
path (`compute_dense_reward` on `prefix_values`).
"""

from __future__ import annotations

import sys

import pytest
import torch

from r3hf.integrations import openrlhf as adapter

import openrlhf_real
from peer_batches import assert_close, logprobs, randn

REAL = openrlhf_real.load()
pytestmark = pytest.mark.skipif(REAL is None, reason="needs OpenRLHF 0.11's source (pip install --no-deps openrlhf)")
VOCAB = 40


def _rearrange(x, pattern):
    if pattern != "b s ... -> (b s) ...":
        raise NotImplementedError(pattern)
    return x.flatten(0, 1)


@pytest.fixture
def cpu_packing(monkeypatch):
    """flash-attn's bert_padding helpers -> CPU equivalents, in OpenRLHF's ring_attn_utils only."""
    from transformers.modeling_flash_attention_utils import _pad_input, _unpad_input

    ring = sys.modules["openrlhf.models.ring_attn_utils"]
    monkeypatch.setattr(ring, "unpad_input", _unpad_input)
    monkeypatch.setattr(ring, "pad_input", _pad_input)
    monkeypatch.setattr(ring, "index_first_axis", lambda tensor, indices: tensor[indices])
    monkeypatch.setattr(ring, "rearrange", _rearrange)
    return ring


def _models(normalize=False):
    """OpenRLHF's RewardModel with packing_samples=True, and the same weights padded."""
    from transformers import GPT2Config, GPT2Model, GPT2PreTrainedModel

    make = REAL["openrlhf.models.model"]._get_reward_model
    config = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=16, n_layer=2, n_head=2, use_cache=False,
                        bos_token_id=0, eos_token_id=0)
    config.normalize_reward = normalize
    if normalize:
        config.mean, config.std = 0.3, 2.0
    torch.manual_seed(0)
    packed = make(GPT2PreTrainedModel, GPT2Model, "score", packing_samples=True)(config).eval()
    padded = make(GPT2PreTrainedModel, GPT2Model, "score", packing_samples=False)(config).eval()
    padded.load_state_dict(packed.state_dict())
    return packed, padded


def _batch(B, S, padding, seed):
    gen = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, VOCAB, (B, S), generator=gen)
    lengths = [S, 1] + [int(torch.randint(2, S + 1, (1,), generator=gen)) for _ in range(B - 2)]
    mask = torch.zeros(B, S, dtype=torch.long)
    for b, n in enumerate(lengths[:B]):
        if padding == "right":
            mask[b, :n] = 1
        else:
            mask[b, S - n:] = 1
    return seq * mask, mask


def _experience(B, S, seed, padding="right"):
    """OpenRLHF's layout: sequences/attention_mask [B, S], action_mask [B, S − 1] over sequences[1:]
    (a prompt, then generated turns with an observation span, then padding)."""
    seq, mask = _batch(B, S, padding, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    action = torch.zeros(B, S - 1, dtype=torch.bool)
    for b in range(B):
        att = mask[b].nonzero().flatten().tolist()
        if len(att) < 3:
            continue  # a row too short for a prompt and an action: no action tokens
        first = att[0] + 1 + int(torch.randint(0, max(1, len(att) // 3), (1,), generator=gen))
        action[b, first - 1: att[-1]] = True  # action j is sequence token j + 1
        if b % 2 and att[-1] - first > 3:
            action[b, first + 1: first + 3] = False  # an observation span
    return seq, mask, action


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("padding", ["right", "left"])
def test_prefix_values_packed_equal_scoring_each_truncation(cpu_packing, normalize, padding):
    packed_model, padded_model = _models(normalize)
    B, S = 4, 11
    seq, mask = _batch(B, S, padding, seed=3)
    with torch.no_grad():
        reward, values = adapter.prefix_values(packed_model, seq, mask, return_reward=True)
        assert torch.equal(reward, packed_model(seq, attention_mask=mask))
        assert_close(reward, padded_model(seq, attention_mask=mask), "packed vs padded RewardModel")
        assert_close(values, adapter.prefix_values(padded_model, seq, mask), "packed vs padded prefix_values")
        for t in range(S):
            truncated = padded_model(seq[:, : t + 1], attention_mask=mask[:, : t + 1])
            for b in range(B):
                if mask[b, : t + 1].any():
                    assert_close(values[b, t], truncated[b], f"row {b} prefix {t}")
                else:
                    assert values[b, t] == 0


def test_packed_prefix_values_is_openrlhfs_stream(cpu_packing):
    packed_model, padded_model = _models()
    seq, mask = _batch(5, 9, "left", seed=5)
    with torch.no_grad():
        out = adapter.packed_prefix_values(packed_model, seq, mask)
        padded = adapter.prefix_values(padded_model, seq, mask)
    # the stream OpenRLHF's RewardModel runs on: its own unpad_and_slice_tensor
    tokens, *_ = cpu_packing.unpad_and_slice_tensor(seq, mask, None)
    assert torch.equal(seq.flatten()[out.indices], tokens[0])
    assert out.cu_seqlens.tolist() == [0] + mask.sum(1).cumsum(0).tolist()
    assert out.values.dtype == torch.float32 and out.values.shape == (int(mask.sum()),)
    assert_close(out.values, padded.flatten()[out.indices], "stream vs padded values")


@pytest.mark.parametrize("B,S", [(2, 4), (5, 12), (6, 23)])
@pytest.mark.parametrize("first,beta_c,clip", [("prompt", 1.0, None), ("zero", 1.0, None), ("prompt", 0.5, (-0.5, 0.5))])
@pytest.mark.parametrize("estimator", ["gae", "reinforce"])
@pytest.mark.parametrize("padding", ["right", "left"])
def test_packed_dense_reward_equals_padded_path(cpu_packing, B, S, first, beta_c, clip, estimator, padding):
    packed_model, padded_model = _models()
    seq, mask, action = _experience(B, S, seed=B * S, padding=padding)
    gen = torch.Generator().manual_seed(S)
    kl = adapter.compute_approx_kl(logprobs(B, S - 1, gen=gen), logprobs(B, S - 1, gen=gen), "k3")
    with torch.no_grad():
        stream = adapter.packed_prefix_values(packed_model, seq, mask)
        scores = adapter.prefix_values(padded_model, seq, mask)
    inputs = (stream.values.clone(), kl.clone(), action.clone())
    got = adapter.packed_dense_reward(stream, 0.05, kl, mask, action, clip, advantage_estimator=estimator,
                                      first=first, beta_c=beta_c)
    want = adapter.compute_dense_reward(scores, 0.05, kl, action, clip, advantage_estimator=estimator,
                                        first=first, beta_c=beta_c)
    assert_close(got, want, "packed_dense_reward vs compute_dense_reward(prefix_values)")
    # the stream form holds the same rewards at the action tokens' stream positions
    on_stream = adapter.packed_token_rewards(stream.values, mask, action, first=first, beta_c=beta_c,
                                             reward_clip_range=clip, output="packed")
    actions = adapter.packed_token_rewards(stream, mask, action, first=first, beta_c=beta_c, reward_clip_range=clip)
    flat = torch.zeros(B * S).index_put((stream.indices,), on_stream).view(B, S)[:, 1:]
    assert torch.equal(flat, actions)
    assert_close(actions - 0.05 * kl, got)
    for x, y in zip(inputs, (stream.values, kl, action)):
        assert torch.equal(x, y)


def test_packed_rewards_telescope_to_final_minus_prompt_score(cpu_packing):
    packed_model, _ = _models()
    seq, mask, action = _experience(5, 15, seed=9)
    with torch.no_grad():
        stream = adapter.packed_prefix_values(packed_model, seq, mask)
    r = adapter.packed_token_rewards(stream, mask, action)
    v = stream.values
    pos = mask.flatten().cumsum(0).view(mask.shape) - 1
    for b in range(5):
        acts = action[b].nonzero().flatten()
        if acts.numel():
            final, before = v[pos[b, acts[-1] + 1]], v[pos[b, acts[0] + 1] - 1]
            torch.testing.assert_close(r[b].sum(), final - before, atol=1e-5, rtol=1e-5)


def test_bad_inputs(cpu_packing):
    packed_model, padded_model = _models()
    seq, mask, action = _experience(3, 8, seed=1)
    with torch.no_grad():
        stream = adapter.packed_prefix_values(packed_model, seq, mask)
    kl = torch.zeros(3, 7)
    with pytest.raises(ValueError, match="packing_samples=True"):
        adapter.packed_prefix_values(padded_model, seq, mask)
    with pytest.raises(ValueError, match="attention_mask must be"):
        adapter.packed_prefix_values(packed_model, seq, mask[:, 1:])
    with pytest.raises(ValueError, match="packed values must be"):
        adapter.packed_token_rewards(stream.values[1:], mask, action)
    with pytest.raises(ValueError, match="action_mask must be"):
        adapter.packed_token_rewards(stream, mask, action[:2])
    with pytest.raises(ValueError, match="output"):
        adapter.packed_token_rewards(stream, mask, action, output="padded")
    bad = action.clone()
    bad[0, -1] = True
    bad_mask = mask.clone()
    bad_mask[0, -1] = 0
    with pytest.raises(ValueError, match="padding"):
        adapter.packed_token_rewards(adapter.packed_prefix_values(packed_model, seq, bad_mask), bad_mask, bad)
    with pytest.raises(ValueError, match="group baseline"):
        adapter.packed_dense_reward(stream, 0.1, kl, mask, action, advantage_estimator="rloo")
    with pytest.raises(ValueError, match="action_mask must be"):
        adapter.packed_dense_reward(stream, 0.1, kl, mask, None, advantage_estimator="gae")


# --- ring attention: the value head's slices gathered over the ring group -----------------------


class _TokenLocalBody(torch.nn.Module):
    """A base model without attention (each position sees its token and position only), so every
    ring rank's slice gives the same outputs as the whole stream without ring-flash-attn (which
    does not install here). The test is about gathering the slices back into OpenRLHF's layout."""

    def __init__(self, config):
        super().__init__()
        self.wte = torch.nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = torch.nn.Embedding(config.n_positions, config.n_embd)

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return {"last_hidden_state": torch.tanh(self.wte(input_ids) + self.wpe(position_ids))}


RING = 2


def _ring_worker(rank, init_file):
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_gather
    from transformers import GPT2Config, GPT2PreTrainedModel
    from transformers.modeling_flash_attention_utils import _pad_input, _unpad_input

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=RING)
    try:
        ring = sys.modules["openrlhf.models.ring_attn_utils"]
        ring.unpad_input, ring.pad_input = _unpad_input, _pad_input
        ring.index_first_axis, ring.rearrange = (lambda tensor, indices: tensor[indices]), _rearrange
        ring.update_ring_attn_params = lambda cu_seqlens: None  # configures ring-flash-attn's kernels only
        ring.all_gather = lambda x, group: torch.cat(all_gather(x.contiguous(), group=group))  # flash-attn's
        make = REAL["openrlhf.models.model"]._get_reward_model
        config = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=8, n_layer=1, n_head=1)
        config.normalize_reward = True
        config.mean, config.std = 0.3, 2.0
        torch.manual_seed(0)
        packed = make(GPT2PreTrainedModel, _TokenLocalBody, "score", packing_samples=True)(config).eval()
        padded = make(GPT2PreTrainedModel, _TokenLocalBody, "score", packing_samples=False)(config).eval()
        padded.load_state_dict(packed.state_dict())
        for padding, B, S in [("right", 4, 11), ("left", 3, 8)]:
            seq, mask = _batch(B, S, padding, seed=B)
            if rank == 0:
                assert int(mask.sum()) % RING == 1  # an odd stream: OpenRLHF pads it for the ring
            group = dist.group.WORLD
            with torch.no_grad():
                stream = adapter.packed_prefix_values(packed, seq, mask, ring_attn_group=group)
                want = adapter.prefix_values(padded, seq, mask)
                assert_close(stream.values, want.flatten()[stream.indices], f"rank {rank}: stream")
                reward, values = adapter.prefix_values(packed, seq, mask, return_reward=True, ring_attn_group=group)
                assert_close(values, want, f"rank {rank}: prefix_values")
                assert_close(reward, padded(seq, attention_mask=mask), f"rank {rank}: reward")
    finally:
        dist.destroy_process_group()


def test_ring_attention_slices_are_gathered():
    import os
    import tempfile

    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_ring_worker, args=(os.path.join(tmp, "rendezvous"),), nprocs=RING, join=True)
