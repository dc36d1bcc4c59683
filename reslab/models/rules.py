"""Depth rules and the error every invalid network description raises (kept apart so the registry and the spec
can both use them)."""

from __future__ import annotations

from dataclasses import dataclass


class SpecError(ValueError):
    """A network description that cannot be built. The message is one line: what is wrong and what is valid."""


@dataclass(frozen=True)
class DepthRule:
    """Valid depths are `step * n + offset` for n >= 1 (`form` says it the way papers do, e.g. "6n+2")."""

    step: int
    offset: int
    form: str

    @property
    def smallest(self) -> int:
        """The shallowest valid depth (n = 1)."""
        return self.step + self.offset

    def blocks(self, depth: int) -> int:
        """n for a valid depth."""
        return (depth - self.offset) // self.step

    def is_valid(self, depth: int) -> bool:
        return depth >= self.smallest and (depth - self.offset) % self.step == 0

    def nearest(self, depth: int) -> list[int]:
        """The valid depths closest to `depth` from below and above (the minimum alone below it)."""
        if depth < self.smallest:
            return [self.smallest]
        n_low = (depth - self.offset) // self.step
        candidates = {self.step * n + self.offset for n in (n_low, n_low + 1)}
        return sorted(d for d in candidates if d != depth)[:2]
