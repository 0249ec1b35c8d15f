"""The packed layout's plumbing (issue 16): reference maps, a hand-computed case, dispatch.

Packed == padded for every op and backend is tests/test_packed_equals_padded.py; bad input is
tests/test_packed_validation.py.
"""

import types

import pytest
import torch

import r3hf.ops as ops
from r3hf import _dispatch
from r3hf.reference.packed import Packing, response_starts, sequence_ids


def _layout():
    # seq 0: prompt 2, response 3 | seq 1: empty | seq 2: prompt 1, response 1 generated, hole, 1 generated
    # seq 3: prompt only (2 positions)
    cu = torch.tensor([0, 5, 5, 9, 11])
    mask = torch.tensor([0, 0, 1, 1, 1, 0, 1, 0, 1, 0, 0], dtype=torch.bool)
    return cu, mask


def test_sequence_ids_and_response_starts():
    cu, mask = _layout()
    assert sequence_ids(cu, 11).tolist() == [0] * 5 + [2] * 4 + [3] * 2
    assert response_starts(cu, mask).tolist() == [2, 5, 6, 11]


def test_packing_round_trip():
    cu, mask = _layout()
    p = Packing(cu, mask)
    x = torch.arange(1.0, 12.0)
    rows = p.rows(x)
    assert rows.tolist() == [[3.0, 4.0, 5.0], [0.0, 0.0, 0.0], [7.0, 8.0, 9.0], [0.0, 0.0, 0.0]]
    assert p.prompt_len.tolist() == [2, 1, 1, 2]  # rows without a response: >= 1, unused
    back = p.unpack(rows)
    assert back.tolist() == [0, 0, 3, 4, 5, 0, 7, 8, 9, 0, 0]


def test_redistribute_by_hand():
    cu, mask = _layout()
    scores = torch.tensor([1.0, 2.0, 4.0, 7.0, 11.0, 0.5, 1.5, 3.0, 6.0, 9.0, 9.0])
    got = ops.redistribute(scores, mask, cu_seqlens=cu, backend="torch")
    # seq 0: Φ_1 = scores[1] = 2 -> 4-2, 7-4, 11-7; seq 2: Φ_1 = scores[5] = 0.5; the hole at 7 is
    # credited to position 6: scores[7] - 0.5 = 2.5; position 8: scores[8] - scores[7] = 3
    assert got.tolist() == [0, 0, 2, 3, 4, 0, 2.5, 0, 3, 0, 0]
    zero = ops.redistribute(scores, mask, first="zero", cu_seqlens=cu, backend="torch")
    assert zero[6] == 3.0 and zero[2] == 4.0  # Φ_1 = 0, never the previous sequence's score


def test_backends_report_packed_choice():
    report = ops.backends()
    assert set(report["packed"]) == set(report["ops"])
    assert all(report["packed"][op]["cpu"] in ("torch", "cpp") for op in report["packed"])


def test_option_devices_limit_a_backend(monkeypatch):
    real = _dispatch.load
    fake = types.SimpleNamespace(
        OPS=("gae",), OPTIONS={"gae": ("cu_seqlens",)}, OPTION_DEVICES={"cu_seqlens": ("cuda",)},
        unavailable_reason=lambda device: None, gae=None,
    )
    monkeypatch.setattr(_dispatch, "load", lambda name: (fake, "fake") if name == "cpp" else real(name))
    cpu = torch.device("cpu")
    assert _dispatch.choose("gae", "cpp", cpu) == "cpp"
    assert _dispatch.choose("gae", "auto", cpu, ("cu_seqlens",)) == "torch"
    with pytest.raises(_dispatch.BackendUnavailableError, match="cu_seqlens on cuda only"):
        _dispatch.choose("gae", "cpp", cpu, ("cu_seqlens",))


def test_fused_group_needs_index():
    cu, mask = _layout()
    with pytest.raises(TypeError, match="index"):
        ops.fused_reward_group_advantages(torch.randn(11, 3), torch.randn(3), None, mask, cu_seqlens=cu)


def test_padded_call_without_prompt_len_names_it():
    with pytest.raises(TypeError, match="prompt_len"):
        ops.redistribute(torch.randn(2, 5), torch.ones(2, 3))
