"""The packed-sequence oracle (tests/packed_oracle.py) on hand-worked batches.

The oracle is the expected side of every packed test, so it is itself checked here against values
worked out by hand from PACKED_CONTRACT.md. These need only the padded ops.
"""

import torch

import packed_oracle as oracle

# Three sequences: [prompt, gen, gen] | empty | [prompt, prompt, gen, observation].
CU = torch.tensor([0, 3, 3, 7])
MASK = torch.tensor([0, 1, 1, 0, 0, 1, 0], dtype=torch.bool)
SCORES = torch.tensor([1.0, 2.0, 4.0, 10.0, 20.0, 40.0, 80.0])


def test_layout():
    lay = oracle.layout(CU, MASK, "prompt")
    assert lay.starts == [1, 3, 5]
    # the empty sequence has no baseline to read: prompt_len 1 only to pass the padded op's check
    assert lay.prompt_len.tolist() == [1, 1, 2]
    assert lay.L == 2 and lay.S == 4
    assert lay.in_region().tolist() == [False, True, True, False, False, True, True]
    assert oracle.layout(CU, MASK, "zero").prompt_len.tolist() == [1, 0, 2]


def test_pad_and_unpack():
    lay = oracle.layout(CU, MASK)
    assert oracle.pad_sequence(SCORES, lay).tolist() == [[1, 2, 4, 0], [0, 0, 0, 0], [10, 20, 40, 80]]
    assert oracle.pad_mask(MASK, lay).tolist() == [[True, True], [False, False], [True, False]]
    padded = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    assert oracle.unpack(padded, lay).tolist() == [0, 1, 2, 0, 0, 5, 6]


def test_redistribute_by_hand():
    # first="prompt": Φ_1 = the score just before the first generated token; the last generated
    # token of sequence 2 gets scores[5] − scores[4]; the observation token after it gets 0.
    got = oracle.redistribute(SCORES, MASK, cu_seqlens=CU, first="prompt")
    assert got.tolist() == [0, 1, 2, 0, 0, 20, 0]
    got = oracle.redistribute(SCORES, MASK, cu_seqlens=CU, first="zero")
    assert got.tolist() == [0, 2, 2, 0, 0, 40, 0]
    # β_c = 0: the sparse reward, the final score at each sequence's last generated token
    got = oracle.redistribute(SCORES, MASK, cu_seqlens=CU, first="prompt", beta_c=0.0)
    assert got.tolist() == [0, 0, 4, 0, 0, 40, 0]


def test_gae_by_hand():
    rewards = torch.ones(7)
    values = torch.tensor([0, 0, 0, 0, 0, 0, 5.0])
    adv, ret = oracle.gae(rewards, values, MASK, 1.0, 1.0, cu_seqlens=CU)
    assert adv.tolist() == [0, 2, 1, 0, 0, 1, 0]
    assert ret.tolist() == [0, 2, 1, 0, 0, 1, 0]
    # carry_masked: the observation token (inside the region) holds the carried advantage 0 and
    # return 0 + V = 5; prompt positions stay 0
    adv, ret = oracle.gae(rewards, values, MASK, 1.0, 1.0, cu_seqlens=CU, carry_masked=True)
    assert adv.tolist() == [0, 2, 1, 0, 0, 1, 0]
    assert ret.tolist() == [0, 2, 1, 0, 0, 1, 5]
    # bootstrap per sequence: sequence 0 starts from 10, sequence 2 from 30 (carried over the observation)
    adv, _ = oracle.gae(rewards, values, MASK, 1.0, 1.0, torch.tensor([10.0, 20.0, 30.0]), cu_seqlens=CU)
    assert adv.tolist() == [0, 12, 11, 0, 0, 31, 0]


def test_reward_to_go_holes_by_hand():
    # sequence 0: [prompt, gen, obs, gen]; γ = 0.5
    cu = torch.tensor([0, 4])
    mask = torch.tensor([0, 1, 0, 1], dtype=torch.bool)
    r = torch.tensor([9.0, 1.0, 9.0, 4.0])
    assert oracle.reward_to_go(r, mask, 0.5, cu_seqlens=cu, holes="skip").tolist() == [0, 3, 0, 4]
    assert oracle.reward_to_go(r, mask, 0.5, cu_seqlens=cu, holes="discount").tolist() == [0, 2, 0, 4]


def test_group_advantages_by_hand():
    # two groups of two sequences (int G = 2); rloo: return minus the other sequence's sum
    cu = torch.tensor([0, 2, 4, 6, 8])
    mask = torch.tensor([0, 1] * 4, dtype=torch.bool)
    r = torch.tensor([0, 1.0, 0, 3.0, 0, 5.0, 0, 9.0])
    got = oracle.group_advantages(r, mask, 2, "rloo", cu_seqlens=cu)
    assert got.tolist() == [0, -2, 0, 2, 0, -4, 0, 4]
    same = oracle.group_advantages(r, mask, torch.tensor([7, 7, 3, 3]), "rloo", cu_seqlens=cu)
    assert same.tolist() == got.tolist()


def test_make_packed_respects_first_prompt():
    for seed in range(20):
        b = oracle.make_packed(16, 9, 3, seed=seed, first="prompt")
        cu, m = b["cu_seqlens"].tolist(), b["response_mask"]
        for i in range(16):
            if cu[i + 1] > cu[i]:
                assert not m[cu[i]], "first='prompt' batch with a generated first token"
        assert cu[-1] == m.numel() == b["hidden"].shape[0] == b["values"].numel()
