"""One benchmark case (shared by r3hf.bench.cases and r3hf.bench.packed) and the ops' fixed settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

GAMMA, LAM, KL_COEF = 1.0, 0.95, 0.05


@dataclass
class Case:
    """Providers (zero-argument callables, name -> callable) compared on the same inputs."""

    group: str
    name: str
    params: dict
    providers: dict[str, Callable[[], object]]
    baseline: str
    bytes_read: int | None = None  # hidden-state bytes read once, for bandwidth figures
    notes: dict = field(default_factory=dict)
