"""Target speed: the MagCache threshold that reaches a speed with the least error, solved before sampling.

MagCache's schedule depends on the ratio curve, the step count and the settings, never on the image, so
a run's whole schedule is known once sampling starts. Given a speed target, ``solve`` picks the
threshold; ``retention_ratio``, K (``max_skips``) and the start/end window stay as the user set them.

Definitions (the tests check exactly these):

* **speedup** of a schedule: steps seen / steps computed, over the run's part of the schedule (steps
  ``offset`` .. ``offset + run_steps - 1``), i.e. how many fewer block passes; a schedule **meets** a
  target when ``computed * target <= steps`` (exact, in fractions).
* **error** of a schedule: the sum, over its skipped steps, of ``|1 - R_t|``, where ``R_t`` is the product
  of the ratios since the last computed step: how much the residual's magnitude has changed since the
  cached one was stored, which is what the rule accumulates. With several conds (CFG) a step counts
  its worst cond. Equivalently: the sum, over every run of consecutive skips, of the rule's
  accumulated error at the run's last skipped step.
* **search space**: the threshold alone, over every schedule the rule can make with the user's retention,
  K and window. The rule skips while ``err < threshold``, so its schedule changes only where the
  threshold crosses one of the accumulated errors it compares. Walking up from 0 and jumping just past
  the smallest compared error at or above the current threshold visits each distinct schedule once,
  as an interval ``(lo, hi]`` of thresholds.
* **choice**: among the schedules that meet the target, the least error (then fewer computed steps,
  then the lower threshold). If none meets it, the fastest the settings allow (then the least error),
  with ``met = False``.
* **reported threshold**: the shortest decimal inside the chosen interval, checked to give the schedule.

The run is simulated exactly as ``RunState`` runs it: the run's first step always computes (there is
no residual yet), steps outside the window compute, and the other steps go to ``MagCacheRule``
with the run's conds, so the plan is the schedule the run gets.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Mapping, Sequence

from .decision import MagCacheParams, MagCacheRule
from .errors import MagCacheInputError
from .ratios import COND, KIND_NAMES

SPEED_CHOICES = ("off", "1.5x", "2x", "2.5x", "3x")
MAX_SPEED = 100


def parse_speed(value, input_name: str = "speed") -> Fraction | None:
    """A speed target as an exact fraction (``"2x"``, ``"2.5"``, ``2.5``), or None for ``"off"``."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("off", "")):
        return None
    text = value.strip().lower().rstrip("x×").strip() if isinstance(value, str) else value
    try:
        if isinstance(text, bool):
            raise ValueError
        speed = Fraction(str(float(text)) if isinstance(text, float) else text).limit_denominator(1000)
    except (ValueError, TypeError, ZeroDivisionError):
        raise MagCacheInputError(input_name, f"got {value!r}; expected 'off' or a speed such as "
                                             f"{', '.join(SPEED_CHOICES[1:])} (or a number from 1 to {MAX_SPEED})") from None
    if not 1 <= speed <= MAX_SPEED:
        raise MagCacheInputError(input_name, f"got {value!r}; a speed target must be from 1x to {MAX_SPEED}x")
    return speed


def speed_text(speed: Fraction | float) -> str:
    return f"{float(speed):g}x"


@dataclass(frozen=True)
class Schedule:
    """One schedule the rule can make: every threshold in ``(lo, hi]`` gives it."""

    lo: float
    hi: float
    computed: tuple[int, ...]
    error: float


@dataclass(frozen=True)
class Plan:
    """The solved setting of one run (or of the node's preview)."""

    target: Fraction
    threshold: float
    interval: tuple[float, float]
    computed: tuple[int, ...]
    offset: int
    steps: int                      # steps in the run's part of the schedule
    total_steps: int
    error: float
    met: bool
    fastest: float                  # the highest speedup these settings allow
    retention_ratio: float
    max_skips: int
    candidates: int                 # distinct schedules searched

    @property
    def speedup(self) -> float:
        return self.steps / len(self.computed)

    @property
    def skipped(self) -> tuple[int, ...]:
        done = set(self.computed)
        return tuple(s for s in range(self.offset, self.offset + self.steps) if s not in done)

    def describe(self) -> str:
        """E.g. ``speed 2x at 28 steps: threshold 0.0423 computes 14/28 [0, 1, ...] (2.00x, error 0.1907)``."""
        return f"speed {speed_text(self.target)} at {self.total_steps} steps: {self.outcome()}"

    def outcome(self) -> str:
        where = f" of steps {self.offset}-{self.offset + self.steps - 1}" if self.steps != self.total_steps else ""
        text = (f"threshold {self.threshold:g} computes {len(self.computed)}/{self.steps}{where} {list(self.computed)} "
                f"({self.speedup:.2f}x, error {self.error:.4f})")
        if not self.met:
            text += (f"; {speed_text(self.target)} is out of reach with retention {self.retention_ratio:g} and K "
                     f"{self.max_skips}: {self.fastest:.2f}x is the fastest they allow, used instead")
        return text

    def short(self) -> str:
        """For the run's summary line, which lists the steps already."""
        text = f"speed {speed_text(self.target)}: solved threshold {self.threshold:g}, error {self.error:.4f}"
        if not self.met:
            text += f", out of reach ({self.fastest:.2f}x is the fastest retention {self.retention_ratio:g} and K {self.max_skips} allow)"
        return text

    def as_dict(self) -> dict:
        return {"target": float(self.target), "threshold": self.threshold, "computed": list(self.computed),
                "offset": self.offset, "steps": self.steps, "total_steps": self.total_steps,
                "speedup": round(self.speedup, 4), "error": round(self.error, 6), "met": self.met,
                "fastest": round(self.fastest, 4)}


def meets(target: Fraction, steps: int, computed: int) -> bool:
    return computed * target <= steps


def simulate(params: MagCacheParams, curves: Mapping[int, Sequence[float]], num_steps: int, kinds: Sequence[int],
             offset: int = 0, run_steps: int | None = None, window: Sequence[bool] | None = None):
    """(computed steps, error, every accumulated error the rule compared) of one run, as ``RunState`` runs it."""
    run_steps = num_steps - offset if run_steps is None else run_steps
    rule = MagCacheRule(params, curves, num_steps)
    computed, compared, error = [], [], 0.0
    for i in range(run_steps):
        step = offset + i
        skip = rule.decide(step, kinds, i > 0 and (window is None or bool(window[i])))
        compared.extend(err for err, _ in rule.last_compared.values())
        if skip:
            error += max(abs(1.0 - ratio) for _, ratio in rule.last_compared.values())
        else:
            computed.append(step)
    return tuple(computed), error, compared


def _walk(simulate, start: float = 0.0, lo: float = -math.inf) -> list[Schedule]:
    """Every schedule ``simulate(threshold) -> (computed, error, compared)`` makes for thresholds from
    ``start`` up, each with its interval; neighbouring intervals with the same schedule are merged."""
    out: list[Schedule] = []
    threshold = start
    for _ in range(100_000):
        computed, error, compared = simulate(threshold)
        hi = min((v for v in compared if v >= threshold), default=math.inf)
        if out and out[-1].computed == computed:
            out[-1] = replace(out[-1], hi=hi)
        else:
            out.append(Schedule(lo, hi, computed, error))
        if hi == math.inf:
            return out
        lo, threshold = hi, math.nextafter(hi, math.inf)
    raise RuntimeError("the threshold search did not end")        # cannot happen: each pass passes one value


def _choose(target: Fraction, found: Sequence[Schedule], steps: int) -> tuple[Schedule, bool, float]:
    """(the schedule to use, whether it meets the target, the highest speedup of any) as the docstring says."""
    ok = [s for s in found if meets(target, steps, len(s.computed))]
    if ok:
        best = min(ok, key=lambda s: (s.error, len(s.computed), s.hi))
    else:
        best = min(found, key=lambda s: (len(s.computed), s.error, s.hi))
    return best, bool(ok), steps / min(len(s.computed) for s in found)


def schedules(params: MagCacheParams, curves: Mapping[int, Sequence[float]], num_steps: int, kinds: Sequence[int],
              offset: int = 0, run_steps: int | None = None, window: Sequence[bool] | None = None) -> list[Schedule]:
    """Every schedule the rule makes as the threshold goes from 0 up (``params.threshold`` is ignored),
    in threshold order; neighbouring intervals with the same schedule are merged."""
    return _walk(lambda t: simulate(replace(params, threshold=t), curves, num_steps, kinds, offset, run_steps, window))


def _representative(s: Schedule, gives) -> float:
    """The shortest decimal threshold in ``(s.lo, s.hi]`` that ``gives`` the schedule (else ``s.hi``)."""
    if s.lo < 0:
        return 0.0
    for digits in range(1, 16):
        q = 10 ** digits
        c = round((math.floor(s.lo * q) + 1) / q, digits)
        if s.lo < c <= s.hi and gives(c):
            return c
    return s.hi


def solve(target, params: MagCacheParams, curves: Mapping[int, Sequence[float]], num_steps: int,
          kinds: Sequence[int] = (COND,), offset: int = 0, run_steps: int | None = None,
          window: Sequence[bool] | None = None) -> Plan:
    """The plan for ``target`` (see the module docstring). ``curves``: kind -> one ratio per step of the
    ``num_steps`` schedule; ``window``: per step of the run, whether it lies in the start/end window.
    Solves are cached per (curves, steps, settings, target)."""
    target = parse_speed(target) if not isinstance(target, Fraction) else target
    if target is None:
        raise ValueError("solve needs a speed target, not 'off'")
    kinds = tuple(sorted(set(kinds))) or (COND,)
    run_steps = num_steps - offset if run_steps is None else run_steps
    curve_key = tuple((k, tuple(float(r) for r in curves[k])) for k in kinds)
    window_key = None if window is None else tuple(bool(w) for w in window)
    return _solve(target, float(params.retention_ratio), int(params.max_skips), curve_key, num_steps, kinds,
                  offset, run_steps, window_key)


@functools.lru_cache(maxsize=256)
def _solve(target: Fraction, retention: float, max_skips: int, curve_key, num_steps: int, kinds: tuple,
           offset: int, run_steps: int, window) -> Plan:
    curves = dict(curve_key)
    params = MagCacheParams(0.0, retention, max_skips)
    found = schedules(params, curves, num_steps, kinds, offset, run_steps, window)
    best, met, fastest = _choose(target, found, run_steps)

    def gives(t):
        return simulate(replace(params, threshold=t), curves, num_steps, kinds, offset, run_steps, window)[0] == best.computed

    return Plan(target, _representative(best, gives), (best.lo, best.hi), best.computed, offset, run_steps,
                num_steps, best.error, met, fastest, retention, max_skips, len(found))


def preview(target, params: MagCacheParams, curves, num_steps: int | None = None) -> tuple[Plan, str]:
    """The node's before-the-run plan: a whole run at the curve's own length (``RatioCurves``), with every
    cond the curves have (cond and uncond for a CFG calibration), and no start/end window. Returns the
    plan and the conds it assumed, in words."""
    n = num_steps or curves.length
    kinds = tuple(sorted(curves.per_kind)) or (COND,)
    plan = solve(target, params, {k: curves.for_steps(k, n) for k in kinds}, n, kinds)
    return plan, " and ".join(KIND_NAMES.get(k, str(k)) for k in kinds)


# -- TeaCache: best effort ---------------------------------------------------------------------------
# TeaCache decides from the image as it samples (the first block's modulated input), so no schedule is
# known before sampling. What a run can do: report the speed it reached, and solve, on the distances it
# measured, the rel_l1_thresh that would have reached the target (same walk and choice as above, with
# TeaCache's rule; error: the sum over skipped steps of the largest accumulated distance of the entries).
# RunState hands that value to the next run of the same patched model at the same steps. The distances
# move a little with the schedule (a skipped step changes the latent the next input is made from), and
# from prompt to prompt, so the next run lands near the target, not exactly on it; the report says so.
def tea_simulate(threshold: float, distances: Mapping, steps: Sequence[int], max_skips: int | None = None):
    """(computed steps, error, compared accumulations) of TeaCache's rule on measured ``distances``
    (entry -> step -> rescaled distance; a step without one computes, as the rule does)."""
    state = {key: [0.0, 0] for key in distances}
    computed, compared, error = [], [], 0.0
    for s in steps:
        all_skip, worst = bool(distances), 0.0
        for key, dist in distances.items():
            acc = state[key]
            if s in dist:
                acc[0] += dist[s]
                compared.append(acc[0])
                if threshold > 0 and acc[0] < threshold and (max_skips is None or acc[1] < max_skips):
                    acc[1] += 1
                    worst = max(worst, acc[0])
                    continue
            acc[0], acc[1] = 0.0, 0
            all_skip = False
        if all_skip:
            error += worst
        else:
            computed.append(s)
    return tuple(computed), error, compared


@dataclass(frozen=True)
class TeaOutcome:
    """A TeaCache run with a speed target: what it used and reached, and what its distances suggest."""

    target: Fraction
    used: float                     # the rel_l1_thresh this run used
    source: str                     # where that came from
    steps: int                      # steps seen
    computed: int                   # steps computed
    suggested: float                # rel_l1_thresh that would have reached the target on this run's distances
    suggested_speedup: float
    suggested_met: bool

    @property
    def speedup(self) -> float:
        return self.steps / self.computed if self.computed else 1.0

    @property
    def met(self) -> bool:
        return meets(self.target, self.steps, self.computed)

    def describe(self) -> str:
        t = speed_text(self.target)
        text = (f"speed {t} (best effort): rel_l1_thresh {self.used:g} ({self.source}) reached {self.speedup:.2f}x, "
                f"{'meeting' if self.met else 'short of'} {t}; on this run's measured distances rel_l1_thresh "
                f"{self.suggested:g} gives {self.suggested_speedup:.2f}x")
        if not self.suggested_met:
            text += f" (the fastest the window and max_skip_steps allow, {t} is out of reach)"
        return text + ", the next run at these steps starts from it"

    short = describe

    def as_dict(self) -> dict:
        return {"target": float(self.target), "rel_l1_thresh": self.used, "source": self.source,
                "speedup": round(self.speedup, 4), "met": self.met, "suggested": self.suggested,
                "suggested_speedup": round(self.suggested_speedup, 4), "suggested_met": self.suggested_met}


def tea_outcome(target: Fraction, used: float, source: str, steps: Sequence[int], computed: int,
                distances: Mapping, max_skips: int | None = None) -> TeaOutcome | None:
    """None when the run measured no distance (nothing could have skipped)."""
    if not any(distances.values()):
        return None
    steps = list(steps)

    def sim(t):
        return tea_simulate(t, distances, steps, max_skips)

    # Threshold 0 never skips (the rule's special case), so the walk starts just above it.
    never = sim(0.0)
    found = [Schedule(-math.inf, 0.0, never[0], never[1])] + _walk(sim, math.nextafter(0.0, math.inf), 0.0)
    best, met, _ = _choose(target, found, len(steps))
    suggested = _representative(best, lambda t: sim(t)[0] == best.computed)
    return TeaOutcome(target, used, source, len(steps), computed, suggested, len(steps) / len(best.computed), met)
