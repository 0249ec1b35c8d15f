"""What the veRL 0.9.1 test modules share: importing veRL (skip without it, fail under CI) and
veRL's own KL-in-reward step on a batch of token-level scores."""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest
import torch

from peer_batches import logprobs


def import_verl(name):
    """importlib.import_module(name), or skip the module when it is missing. CI (.ci/run, after its
    veRL step) sets R3HF_REQUIRE_VERL=1 so that a broken install fails instead of skipping."""
    if os.environ.get("R3HF_REQUIRE_VERL"):
        return importlib.import_module(name)
    return pytest.importorskip(name)


def kl_in_reward(token_level_scores, response_mask, uids, kl_coef=0.05, seed=5):
    """veRL's own `apply_kl_penalty` (kl_penalty="kl", a fixed coefficient) on token_level_scores
    [B, L] with random old/ref log-probs from `seed` -> the DataProto it returns
    (batch["token_level_rewards"] = scores − kl_coef · KL)."""
    from verl import DataProto
    from verl.trainer.ppo import core_algos, ray_trainer

    gen = torch.Generator().manual_seed(seed)
    B, L = token_level_scores.shape
    batch = DataProto.from_dict(
        tensors=dict(token_level_scores=token_level_scores, response_mask=response_mask,
                     old_log_probs=logprobs(B, L, gen=gen), ref_log_prob=logprobs(B, L, gen=gen)),
        non_tensors={"uid": np.array(uids, dtype=object)},
    )
    batch, _ = ray_trainer.apply_kl_penalty(batch, core_algos.FixedKLController(kl_coef=kl_coef), kl_penalty="kl")
    return batch
