"""Hugging Face reward models -> every prefix score in one forward pass -> R3HF token rewards.

- `prefix_scores(model, input_ids, attention_mask)`: [B, S] score of every prefix (causal
  backbone found through `base_model_prefix`, the model's own head applied by `r3hf.ops`).
- `reward_hidden_states(...)`: (hidden, weight, bias) to pass straight to `ops.fused_reward_gae`.
- `RewardRedistributor`: PPO batches -> token rewards (or rewards, advantages, returns), with
  several scorers combined by coefficients and reward models on a different tokenizer.
- `prefix_diagnostics(...)`: do the prefix scores carry signal (Var(R − Φ_t)/Var(R) per position)?
- `prefix_pairs(dataset, fraction)`: truncated preference pairs for prefix-aware RM training.
- `PotentialHead`, `fit_potential(...)`, `OnlinePotential`: a linear potential head on the frozen
  RM's hidden states (R from the RM, Φ' from the head), fit label-free or on cut pairs;
  `potential_scores` reads both heads from one forward, `potential_diagnostics` compares them.
"""

from .._extras import require

require("hf", "r3hf.models", packages=("transformers",))

from .align import aligned_prefix_scores, policy_char_ends, rm_prefix_index, same_tokenizer
from .heads import HEAD_NAMES, Head, UnsupportedModelError, check_causal, find_backbone, find_head
from .redistributor import RewardRedistributor, Scorer
from .scoring import position_ids, prefix_scores, reward_hidden_states
from .diagnostics import plot_diagnostics, prefix_diagnostics, save_diagnostics
from .prefix_pairs import prefix_pairs
from .potential import PotentialHead, potential_scores
from .potential_fit import fit_potential, potential_diagnostics
from .potential_online import OnlinePotential

__all__ = [
    "prefix_scores",
    "reward_hidden_states",
    "RewardRedistributor",
    "Scorer",
    "find_head",
    "find_backbone",
    "check_causal",
    "Head",
    "HEAD_NAMES",
    "UnsupportedModelError",
    "position_ids",
    "aligned_prefix_scores",
    "policy_char_ends",
    "rm_prefix_index",
    "same_tokenizer",
    "prefix_diagnostics",
    "save_diagnostics",
    "plot_diagnostics",
    "prefix_pairs",
    "PotentialHead",
    "fit_potential",
    "OnlinePotential",
    "potential_scores",
    "potential_diagnostics",
]
