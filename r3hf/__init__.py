"""r3hf: token-level rewards (R3HF/RED) fused with KL and GAE for PPO. Public entry: `r3hf.ops`."""

__version__ = "0.1.0"
