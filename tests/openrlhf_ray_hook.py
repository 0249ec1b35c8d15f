"""Test-only Ray worker hook: OpenRLHF's source with its heavy imports stubbed (openrlhf_real), then
r3hf's own hook. OpenRLHF is installed here without deepspeed/vLLM/flash-attn, so a Ray worker
could not import its experience maker otherwise; the launcher's real hook is called unchanged."""

import openrlhf_real


def setup():
    openrlhf_real.load()  # imports the experience maker with the stubs, keeps the real modules loaded
    from r3hf.integrations.openrlhf.train_ppo_ray import setup_worker

    setup_worker()
