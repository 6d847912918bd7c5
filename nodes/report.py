"""What the cache nodes tell the user after each sampling run: a report per run, in the log and on the node.

``patching._outer_sample`` calls ``run_ended`` once per sampler run (its ``finally``), and ``run_unusable``
for a run that is sampled uncached. Each builds a plain dict (``run_report``: which steps of the run
computed and which skipped, k/N skipped, the block-pass speedup, the sampling time, the method and
preset in use, notices), writes the one-line summary to the log and, inside a ComfyUI server, sends the
dict over the websocket as a ``magcache.report`` event addressed to the node that patched the model
(its ``unique_id`` hidden input) and to the client that queued the prompt. The front end
(``web/js/magcache.js``) draws it on that node. Without a server (plain Python, tests) only the log line
is written. Nothing here may break sampling: a failure to send is logged and dropped.

A calibration also reports its curves (ratio and std per step and cond, the TeaCache fit) and, once it
is saved, ``calibrations_changed`` tells every open page the new preset lists.
"""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("comfyui-magcache")

REPORT_EVENT = "magcache.report"              # one sampler run, for one node
CALIBRATIONS_EVENT = "magcache.calibrations"  # the preset lists changed (a calibration was saved)
TITLES = {"magcache": "MagCache", "teacache": "TeaCache", "calibrate": "MagCache calibration"}
COMPUTED, SKIPPED, NOT_RUN = "C", "S", "-"   # the strip: one letter per step of the run


class Reporter:
    """Where a patched model's run reports go: the node (``unique_id``) of a ``node_type``."""

    def __init__(self, node_id, node_type: str, settings: str = ""):
        self.node_id = None if node_id is None else str(node_id)
        self.node_type = node_type
        self.settings = settings

    def __repr__(self):
        return f"Reporter({self.node_id!r}, {self.node_type!r})"


class NodeOutput(dict):
    """A node's ``{"ui": ..., "result": ...}`` return that also indexes like its result tuple, so that
    Python callers (scripts, benchmarks, tests) keep writing ``MagCacheApply().apply(...)[0]``."""

    def __init__(self, result: tuple, ui: dict):
        super().__init__(ui=ui, result=tuple(result))

    def __getitem__(self, key):
        if isinstance(key, int):
            return dict.__getitem__(self, "result")[key]
        return dict.__getitem__(self, key)


def node_ui(method: str, label: str, settings: str, notices=()) -> dict:
    """The ``ui`` a cache node returns when it runs: what it set up (shown before any sampling)."""
    return {"magcache": [{"method": method, "title": TITLES[method], "label": label, "settings": settings,
                          "notices": [str(n) for n in notices]}]}


# -- building the report ----------------------------------------------------------------------------
def strip_of(state) -> str:
    """One letter per step of the run (steps ``offset`` .. ``offset + run_steps - 1`` of the schedule):
    C computed (the blocks ran), S skipped (the cached residual was used), - not reached."""
    seen = set(state.decisions)
    return "".join((COMPUTED if s in state.computed_steps else SKIPPED) if s in seen else NOT_RUN
                   for s in range(state.offset, state.offset + state.run_steps))


def run_report(state, seconds: float | None = None, finished: bool = True, details: dict | None = None,
               sampler: dict | None = None) -> dict:
    """The report of one finished (or stopped) sampling run of ``state`` (a ``RunState``)."""
    config = state.config
    strip = strip_of(state)
    computed, skipped = strip.count(COMPUTED), strip.count(SKIPPED)
    notices = list((details or {}).get("notices", ()))
    if not finished:
        notices.append(f"sampling stopped early, after {computed + skipped} of {state.run_steps} steps")
    if getattr(config, "notice", ""):                  # what 'auto' decided
        notices.insert(0, config.notice)
    plan = getattr(state, "plan", None)                # a speed target: the solved threshold and what it reached
    if plan is not None:
        notices.append(plan.short())
    if getattr(state, "bypassed_calls", 0):
        notices.append(f"{state.bypassed_calls} model calls bypassed the block patches and computed in full")
    out = {
        "method": config.method, "title": TITLES[config.method], "label": config.label,
        "offset": state.offset, "run_steps": state.run_steps, "total_steps": state.num_steps,
        "strip": strip, "computed": computed, "skipped": skipped,
        "speedup": round(_block_pass_speedup(state, computed, skipped), 3),
        "seconds": None if seconds is None else round(seconds, 3),
        "finished": finished, "notices": notices, "sampler": sampler,
    }
    for key in ("calibration", "teacache"):
        if details and key in details:
            out[key] = details[key]
    if plan is not None:
        out["target"] = plan.as_dict()
    return out


def _block_pass_speedup(state, computed: int, skipped: int) -> float:
    """Steps / computed steps; a first_blocks run counts the first blocks its skipped steps still ran."""
    count = getattr(state, "block_pass_speedup", None)
    if callable(count):
        return count(computed, skipped)
    return (computed + skipped) / computed if computed else 1.0


def unusable_report(config, reason: str, sampler: dict | None = None) -> dict:
    """A run that was sampled as if the node were not there (``schedule.unusable`` gave a reason)."""
    what = "nothing was calibrated or saved" if config.method == "calibrate" else "every step computed"
    return {"method": config.method, "title": TITLES[config.method], "label": config.label, "strip": "",
            "computed": None, "skipped": 0, "speedup": 1.0, "seconds": None, "finished": True,
            "notices": [f"{reason}; {what}"], "sampler": sampler}


def log_line(report: dict) -> str:
    """The log's one line per run, e.g. ``TeaCache [FLUX.1, flux]: computed 13/28 steps [0, 1, ...],
    skipped 15 (2.15x fewer block passes)``."""
    r = report
    where = ""
    if r.get("run_steps") is not None and r["run_steps"] != r["total_steps"]:
        where = f" (steps {r['offset']}-{r['offset'] + r['run_steps'] - 1} of {r['total_steps']})"
    done = [r["offset"] + i for i, c in enumerate(r["strip"]) if c == COMPUTED]
    seen = r["computed"] + r["skipped"]
    line = (f"{r['title']} [{r['label']}]{where}: computed {r['computed']}/{seen} steps {done}, skipped "
            f"{r['skipped']} ({r['speedup']:.2f}x fewer block passes)")
    if r.get("seconds") is not None:
        line += f", {r['seconds']:.2f} s"
    return line + "".join(f"; {n}" for n in r["notices"] if n.startswith("sampling stopped early"))


def calibration_details(name: str, path: str, model: str, steps: int, stats: dict, fit: dict | None = None) -> dict:
    """What a saved calibration adds to its run's report: where it is, and its curves to draw (ratio and
    std per step and cond; the TeaCache fit with the points it was fitted to)."""
    out = {"calibration": {"name": name, "path": path, "model": model, "steps": steps,
                           "curves": {kind: {"ratio": s["ratio"], "std": s.get("std", [])} for kind, s in stats.items()}}}
    if isinstance(fit, dict):
        out["teacache"] = {"coefficients": fit["coefficients"], "rmse": fit.get("rmse"),
                           "points": {kind: {"input_l1": s["input_l1"], "l1": s["l1"]}
                                      for kind, s in stats.items() if "input_l1" in s and "l1" in s}}
    return out


# -- sending ------------------------------------------------------------------------------------------
def prompt_server():
    """ComfyUI's running PromptServer, or None (plain Python, tests). Never imports the server module:
    inside ComfyUI main.py has imported it and made the instance before any node runs."""
    cls = getattr(sys.modules.get("server"), "PromptServer", None)
    instance = getattr(cls, "instance", None)
    return instance if callable(getattr(instance, "send_sync", None)) else None


def _executing():
    """(prompt id, node id) of the node ComfyUI is executing (the sampler), or (None, None)."""
    try:
        from comfy_execution.utils import get_executing_context
        ctx = get_executing_context()
    except Exception:                                    # noqa: BLE001 - older ComfyUI, or none
        return None, None
    return (ctx.prompt_id, ctx.node_id) if ctx is not None else (None, None)


def send(reporter: Reporter | None, report: dict) -> bool:
    """Sends ``report`` to the node of ``reporter`` in the page that queued the prompt. False if there is
    nowhere to send it (no server, no node id, a prompt queued without a client id)."""
    server = prompt_server()
    if server is None or reporter is None or reporter.node_id is None:
        return False
    client = getattr(server, "client_id", None)
    if client is None:                                   # as ComfyUI's own "executed": only to the queuing client
        return False
    prompt_id, _ = _executing()
    server.send_sync(REPORT_EVENT, {"node": reporter.node_id, "node_type": reporter.node_type,
                                    "prompt_id": prompt_id, "settings": reporter.settings, "run": report}, client)
    return True


def _sampler() -> dict | None:
    prompt_id, node_id = _executing()
    return None if node_id is None else {"node": str(node_id)}


def run_ended(reporter: Reporter | None, state, started: float, finished: bool, details: dict | None = None) -> None:
    """The end of one sampling run (``_outer_sample``'s ``finally``): log its line, send its report."""
    try:
        report = run_report(state, time.perf_counter() - started, finished, details, _sampler())
        log.info("%s", log_line(report))
        for notice in report["notices"]:
            if not notice.startswith("sampling stopped early"):
                log.warning("%s [%s]: %s", report["title"], report["label"], notice)
        send(reporter, report)
        if "calibration" in report:
            calibrations_changed()
    except Exception as e:                               # noqa: BLE001 - a report must never cost the image
        log.warning("MagCache: could not report the run: %s: %s", type(e).__name__, e)


def run_unusable(reporter: Reporter | None, config, reason: str) -> None:
    """A run sampled uncached (its reason is already in the log): tell the node."""
    try:
        send(reporter, unusable_report(config, reason, _sampler()))
    except Exception as e:                               # noqa: BLE001
        log.warning("MagCache: could not report the run: %s: %s", type(e).__name__, e)


def preset_lists() -> dict:
    """The preset lists the apply nodes offer now, as their INPUT_TYPES give them."""
    from .magcache_nodes import MagCacheApply
    from .teacache_nodes import TeaCacheApply
    return {name: cls.INPUT_TYPES()["required"]["preset"][0]
            for name, cls in (("MagCacheApply", MagCacheApply), ("TeaCacheApply", TeaCacheApply))}


def calibrations_changed() -> None:
    """Every open page: here are the new preset lists (no reload, no R)."""
    server = prompt_server()
    if server is not None:
        server.send_sync(CALIBRATIONS_EVENT, {"presets": preset_lists()})
