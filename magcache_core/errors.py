"""The one error type the pack raises for bad user input, and the checks every front end (the nodes, the
diffusers API) shares."""
from __future__ import annotations

import math


class MagCacheInputError(ValueError):
    """A user-supplied value is wrong. The message names the input and what would be right."""

    def __init__(self, input_name: str, problem: str):
        self.input_name = input_name
        super().__init__(f"{input_name}: {problem}")


def number(name, value, lo, hi, integer=False):
    """``value`` as a float (int with ``integer``) if it is a finite number from ``lo`` to ``hi``, else an error naming ``name``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (lo <= value <= hi) or (integer and int(value) != value):
        kind = "a whole number" if integer else "a number"
        raise MagCacheInputError(name, f"got {value!r}; expected {kind} from {lo} to {hi}")
    return int(value) if integer else float(value)


def listed(names) -> str:
    """Names for a message a person reads (ComfyUI's error dialog): a, b, c - not a Python list."""
    return ", ".join(str(n) for n in names) or "none"
