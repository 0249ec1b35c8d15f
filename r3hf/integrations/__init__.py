"""Drop-in adapters for existing PPO trainers: veRL 0.9, OpenRLHF 0.11 and TRL ≤ 1.12.

Each adapter takes the tensors its trainer already has, in that trainer's layout and padding
conventions, translates them to r3hf's (prompt ⊕ response, `response_mask`) and calls
`r3hf.ops`; none re-implements the math. Each returns what the trainer's own function returns,
position for position (float32), so swapping one in changes nothing but speed — or, with the
dense variants, replaces the trainer's sparse score with R3HF token-level rewards.

    from r3hf.integrations import verl, openrlhf, trl

The submodules import their trainer only where needed (e.g. `verl.register()`), so all three
import without veRL, OpenRLHF or TRL ≤ 1.12 installed. See docs/integrations.md.
`r3hf.integrations.verl_reward` (a subclass of veRL's reward-manager base) needs veRL.
`r3hf.integrations.verl_packed` maps veRL's packed (no-padding) stream to its [B, L] response
tensors and computes R3HF rewards on the stream (torch only; veRL is not imported).
"""

__all__ = ["verl", "openrlhf", "trl"]
