"""Plain-torch reference of every r3hf op: the spec every backend is tested against.

Functions here take the normalised arguments that `r3hf._validate` produces (bool masks,
int64 `prompt_len` [B], `(low, high)` ranges); call them through `r3hf.ops`, which validates.
All outputs are float32.
"""

from .projection import prefix_scores
from .rewards import kl_penalty, redistribute, token_rewards
from .gae import gae
from .whiten import masked_whiten
from .fused import fused_reward_gae
from .returns import reward_to_go
from .group import group_advantages
from .fused_group import fused_reward_group_advantages

__all__ = [
    "prefix_scores",
    "redistribute",
    "kl_penalty",
    "token_rewards",
    "gae",
    "masked_whiten",
    "fused_reward_gae",
    "reward_to_go",
    "group_advantages",
    "fused_reward_group_advantages",
]
