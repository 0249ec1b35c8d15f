"""R3HFGRPOTrainer on two CPU processes (accelerate, gloo) equals one process on the same batch.

Two ranks hold 3 completions each with groups of 2, so the middle group straddles the ranks. A
deterministic `rollout_func` makes the completions depend only on the prompt and the global row,
so the one-process run sees exactly the same batch (checked). Configurations: grpo with
scale_rewards="batch", reinforce_pp_baseline (batch whitening), and grpo with only a rule-based
function that returns None for some completions (TRL's unscorable rows)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

pytest.importorskip("trl")
pytest.importorskip("datasets")

from trl_grpo_dist_worker import CONFIGS, main as one_process  # noqa: E402
from trl_grpo_harness import policy_path, tmpdir  # noqa: E402

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trl_grpo_dist_worker.py")
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trim(t: torch.Tensor, T: int) -> torch.Tensor:
    """[B, T'] -> [B, T]: drop (all-zero / pad) columns beyond T or pad with zeros."""
    if t.shape[1] >= T:
        return t[:, :T]
    return torch.cat([t, t.new_zeros(t.shape[0], T - t.shape[1])], 1)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_processes_equal_one_process():
    root = tmpdir()
    policy = policy_path(root)
    port = _free_port()
    procs = []
    for rank in range(WORLD):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), TRL_EXPERIMENTAL_SILENCE="1", OMP_NUM_THREADS="1",
                   TOKENIZERS_PARALLELISM="false")
        procs.append(subprocess.Popen([sys.executable, WORKER, policy, f"{root}/two", "3"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=600)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]
    ranks = [torch.load(f"{root}/two.rank{r}.pt") for r in range(WORLD)]

    one_process(policy, f"{root}/one", 6)
    single = torch.load(f"{root}/one.rank0.pt")

    assert all(ranks[r][c]["num_processes"] == WORLD for r in range(WORLD) for c in range(len(CONFIGS)))
    for c, config in enumerate(CONFIGS):
        want = single[c]
        T = want["advantages"].shape[1]
        for key in ("completion_ids", "advantages", "rewards"):
            parts = [ranks[r][c][key] for r in range(WORLD)]
            for part in parts:  # columns beyond the longest completion are padding: 0 advantage/reward, pad id
                if part.shape[1] > T and key != "completion_ids":
                    assert not part[:, T:].any()
            got = torch.cat([_trim(part, T) for part in parts])
            if key == "completion_ids":
                assert torch.equal(got, want[key]), f"{config}: the runs saw different completions"
            else:
                torch.testing.assert_close(got, want[key], rtol=1e-5, atol=1e-5, msg=f"{config}: {key}")
        assert want["advantages"].abs().sum() > 0
    plain_only = single[-1]  # the rule-based score is > 0 for every scorable completion
    unscorable = ~plain_only["rewards"].abs().sum(1).gt(0)
    assert unscorable.any() and (~unscorable).any() and not plain_only["advantages"][unscorable].any()
