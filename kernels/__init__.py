"""Triton kernels of r3hf, installed as `r3hf.kernels` (the folder is `kernels/` in the source tree).

Import through `r3hf.ops` (backend "triton"); on a machine without a GPU set
TRITON_INTERPRET=1 before importing to run them on the CPU. Modules: `projection`
(prefix_scores), `rewards` (token_rewards, redistribute, kl_penalty), `gae`, `fused`
(fused_reward_gae), `returns` (reward_to_go and the passes of the group estimators),
`group` (the fused row pass of fused_reward_group_advantages), `position` (the per-position
tables and counts of baseline="position"), `scan` (the GAE combine and
backward scans), `_common` (configs, chunk sizes, environment variables). Design and environment variables: docs/triton.md.
"""
