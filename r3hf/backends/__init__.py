"""Compiled backends behind `r3hf.ops` (see `r3hf._dispatch` for the protocol each follows)."""
