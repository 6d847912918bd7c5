"""Magnitude-ratio curves: validation, per-cond curves and interpolation to any step count.

A curve holds one ratio per denoising step: ratio[t] = mean over tokens of |r_t| / |r_{t-1}|,
where r_t is the transformer blocks' residual at step t (ratio[0] is 1 by convention).

Interpolation (``nearest_interp``) is nearest-neighbour on a uniform grid that maps the first
and last step of the target onto the first and last entry of the source:
``index_j = round(j * (len(src) - 1) / (n - 1))``, rounding half to even (numpy/torch ``round``).
It is the rule of the MagCache authors' repositories and of diffusers'
``diffusers.hooks.mag_cache.nearest_interp``; ``tests/test_core.py`` checks the two agree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from .errors import MagCacheInputError

COND = 0     # ComfyUI's cond_or_uncond value for the positive prompt
UNCOND = 1   # ... and for the negative prompt
# Guiders with more conds per step (PerpNegGuider, DualCFGGuider) send kinds 2, 3...: "cond2", "cond3"...
KIND_NAMES = {COND: "cond", UNCOND: "uncond", **{k: f"cond{k}" for k in range(2, 8)}}
KIND_BY_NAME = {v: k for k, v in KIND_NAMES.items()}


def validate_ratios(value, input_name: str = "ratios") -> list[float]:
    """Return ``value`` as a list of finite positive floats, or raise naming ``input_name``."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise MagCacheInputError(input_name, f"expected a list of positive numbers, got {type(value).__name__}")
    if len(value) == 0:
        raise MagCacheInputError(input_name, "the list is empty; give one positive ratio per step (at least 2)")
    if len(value) < 2:
        raise MagCacheInputError(input_name, "needs at least 2 ratios (one per denoising step)")
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise MagCacheInputError(input_name, f"entry {i} is {v!r}; every entry must be a number")
        f = float(v)
        if not math.isfinite(f):
            raise MagCacheInputError(input_name, f"entry {i} is {v!r}; every ratio must be finite (no NaN/inf)")
        if f <= 0:
            raise MagCacheInputError(input_name, f"entry {i} is {v!r}; every ratio must be > 0")
        out.append(f)
    return out


def nearest_interp(values: Sequence[float], n: int) -> list[float]:
    """Resample ``values`` to ``n`` entries by nearest neighbour (see module docstring)."""
    if n < 1:
        raise ValueError(f"target length must be >= 1, got {n}")
    src = list(values)
    if n == 1:
        return [src[-1]]
    scale = (len(src) - 1) / (n - 1)
    return [src[int(round(j * scale))] for j in range(n)]


@dataclass(frozen=True)
class RatioCurves:
    """One curve per cond kind (0 = cond, 1 = uncond); ``shared`` serves every kind without its own."""

    per_kind: Mapping[int, tuple[float, ...]] = field(default_factory=dict)
    shared: tuple[float, ...] | None = None

    @staticmethod
    def single(curve: Sequence[float], input_name: str = "ratios") -> "RatioCurves":
        return RatioCurves(shared=tuple(validate_ratios(list(curve), input_name)))

    @staticmethod
    def interleaved(curve: Sequence[float], input_name: str = "ratios") -> "RatioCurves":
        """A published CFG curve that alternates cond, uncond, cond, uncond, ... per step."""
        vals = validate_ratios(list(curve), input_name)
        if len(vals) % 2:
            raise MagCacheInputError(input_name, f"an interleaved cond/uncond curve needs an even length, got {len(vals)}")
        return RatioCurves(per_kind={COND: tuple(vals[0::2]), UNCOND: tuple(vals[1::2])})

    @staticmethod
    def from_json(obj, input_name: str = "ratios") -> "RatioCurves":
        """Accept ``[r0, r1, ...]`` or ``{"cond": [...], "uncond": [...]}``."""
        if isinstance(obj, Mapping):
            unknown = set(obj) - set(KIND_BY_NAME)
            if unknown or not obj:
                raise MagCacheInputError(input_name, f"expected keys 'cond' and/or 'uncond', got {sorted(obj) or 'none'}")
            per_kind = {KIND_BY_NAME[k]: tuple(validate_ratios(v, f"{input_name}.{k}")) for k, v in obj.items()}
            return RatioCurves(per_kind=per_kind)
        return RatioCurves.single(validate_ratios(obj, input_name), input_name=input_name)

    def to_json(self):
        if self.shared is not None and not self.per_kind:
            return list(self.shared)
        out = {KIND_NAMES[k]: list(v) for k, v in sorted(self.per_kind.items())}
        if self.shared is not None:
            for name in (KIND_NAMES[COND], KIND_NAMES[UNCOND]):
                out.setdefault(name, list(self.shared))
        return out

    @property
    def length(self) -> int:
        curves = list(self.per_kind.values()) + ([self.shared] if self.shared is not None else [])
        return max(len(c) for c in curves)

    def curve(self, kind: int) -> tuple[float, ...]:
        if kind in self.per_kind:
            return self.per_kind[kind]
        if self.shared is not None:
            return self.shared
        # A kind the curves do not know (e.g. uncond with a cond-only calibration): use the cond curve.
        return self.per_kind.get(COND) or next(iter(self.per_kind.values()))

    def for_steps(self, kind: int, num_steps: int) -> list[float]:
        c = self.curve(kind)
        return list(c) if len(c) == num_steps else nearest_interp(c, num_steps)
