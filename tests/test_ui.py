"""What the user sees, on the Python side: the run report (nodes/report.py), the nodes' ui output, the
calibration routes (nodes/routes.py) and the input ranges. The page itself: tests/test_browser.py."""
from __future__ import annotations

import asyncio
import json
import logging
import os

import pytest
import torch

from comfyui_magcache.magcache_core import MagCacheInputError, MagCacheParams, RatioCurves, RunConfig, RunState
from comfyui_magcache.nodes import report, routes
from comfyui_magcache.nodes.magcache_nodes import MagCacheApply, MagCacheCalibrate, calibration_store
from comfyui_magcache.nodes.teacache_nodes import TeaCacheApply
from comfyui_magcache.strategies import STRATEGIES
from tiny_models import sample, tiny_flux, tiny_wan


def drive(state: RunState, steps, keys=("c",), kinds=(0,)) -> None:
    """Runs ``steps`` of ``state`` through the core API as a host would (zeros in, ones added)."""
    x = torch.zeros(len(keys), 4, 2)
    for step in steps:
        ctx = state.begin_call(state.sigmas[step - state.offset], list(keys), list(kinds))
        state.enter_blocks(ctx, x)
        if not ctx.skip:
            state.leave_blocks(ctx, x + 1)
        state.end_call(ctx)


def flat_config(steps: int, threshold=0.5, k=2) -> RunConfig:
    return RunConfig("magcache", MagCacheParams(threshold, 0.0, k), RatioCurves.single([1.0] * steps), label="test, flat")


# -- the report of one run ------------------------------------------------------------------------------
def test_report_of_a_known_schedule():
    """Flat curve, K 2: steps 0 and 3 compute, 1, 2, 4, 5 skip (the rule by hand: a flat curve never adds
    error, so only K stops the skipping)."""
    state = RunState(flat_config(6), [1 - i / 6 for i in range(7)])
    drive(state, range(6))
    rep = report.run_report(state, seconds=1.25, sampler={"node": "6"})
    assert rep["strip"] == "CSSCSS"
    assert (rep["computed"], rep["skipped"], rep["speedup"]) == (2, 4, 3.0)
    assert (rep["offset"], rep["run_steps"], rep["total_steps"]) == (0, 6, 6)
    assert rep["title"] == "MagCache" and rep["label"] == "test, flat" and rep["seconds"] == 1.25
    assert rep["finished"] and rep["notices"] == [] and rep["sampler"] == {"node": "6"}
    assert report.log_line(rep) == ("MagCache [test, flat]: computed 2/6 steps [0, 3], skipped 4 "
                                    "(3.00x fewer block passes), 1.25 s")
    json.dumps(rep)                                          # it goes over the websocket as it is


def test_report_of_part_of_a_schedule_stopped_early():
    """Steps 10-19 of a 20-step schedule (the second sampler of a split run), interrupted after 4 steps."""
    state = RunState(flat_config(20), [1 - i / 20 for i in range(10, 21)], offset=10, total_steps=20)
    drive(state, range(10, 14))
    rep = report.run_report(state, seconds=0.5, finished=False)
    assert rep["strip"] == "CSSC------" and (rep["computed"], rep["skipped"]) == (2, 2)
    assert rep["notices"] == ["sampling stopped early, after 4 of 10 steps"]
    line = report.log_line(rep)
    assert line.startswith("MagCache [test, flat] (steps 10-19 of 20): computed 2/4 steps [10, 13], skipped 2")
    assert line.endswith("; sampling stopped early, after 4 of 10 steps")


def test_report_of_a_teacache_run_is_labelled_teacache(caplog):
    """TeaCache's line in the log says TeaCache (it said 'MagCache teacache')."""
    with caplog.at_level(logging.INFO, logger="comfyui-magcache"):
        sample(TeaCacheApply().apply(tiny_flux(), "flux", 0.4)[0], steps=6)
    lines = [r.getMessage() for r in caplog.records if "computed" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("TeaCache [FLUX.1, flux"), lines


def test_calibration_run_report_carries_its_curves(caplog):
    """MagCacheCalibrate's saver hands the report what the node draws: the saved file, ratio and std per step
    and cond, the TeaCache fit with its points."""
    model = tiny_wan()
    node = MagCacheCalibrate().calibrate(model, "ui report curves", unique_id="4")
    with caplog.at_level(logging.INFO, logger="comfyui-magcache"):
        sample(node[0], steps=6, cfg=3.0)
    doc = calibration_store().load("ui report curves")
    line = [r.getMessage() for r in caplog.records if "computed" in r.getMessage()]
    assert line and line[0].startswith("MagCache calibration [Wan 2.1 / 2.2, calibrating 'ui report curves']")
    details = report.calibration_details("ui report curves", "/x.json", doc["model"], doc["steps"], doc["stats"],
                                         doc["teacache"])
    cal = details["calibration"]
    assert cal["curves"]["cond"]["ratio"] == doc["mag_ratios"]["cond"] and len(cal["curves"]["uncond"]["std"]) == 6
    assert details["teacache"]["coefficients"] == doc["teacache"]["coefficients"]
    assert details["teacache"]["points"]["cond"]["input_l1"] == doc["stats"]["cond"]["input_l1"]
    assert node["ui"]["magcache"][0]["settings"] == "saves 'ui report curves' when sampling ends"


def test_no_server_no_report_and_sampling_unchanged():
    """In plain Python there is no PromptServer: nothing is sent, nothing breaks."""
    assert report.prompt_server() is None
    assert report.send(report.Reporter("3", "MagCacheApply"), {"x": 1}) is False
    assert routes.register() is False


# -- the nodes' ui output -------------------------------------------------------------------------------
def test_apply_nodes_return_their_settings_as_ui_and_still_index_like_a_tuple():
    model = tiny_flux()
    out = MagCacheApply().apply(model, "flux", 0.3, 0.2, 4, unique_id="12")
    assert out[0] is out["result"][0] and type(out[0]).__name__ == "ModelPatcher"
    (ui,) = out["ui"]["magcache"]
    assert ui == {"method": "magcache", "title": "MagCache", "label": "FLUX.1, flux", "settings":
                  "threshold 0.3, retention 0.2, K 4, skipped steps extrapolated", "notices": ["the preset recommends threshold 0.24, retention 0.1, K 5"]}
    reporter = out[0].get_wrappers("outer_sample", "comfyui-magcache")[0].args[3]
    assert (reporter.node_id, reporter.node_type) == ("12", "MagCacheApply")
    tea = TeaCacheApply().apply(model, "flux", 0.4, 0.0, 0.9, "main_device", 3, unique_id="13")
    assert tea["ui"]["magcache"][0]["settings"] == "rel_l1_thresh 0.4, K 3, window 0-0.9, skipped steps extrapolated"
    assert tea["ui"]["magcache"][0]["title"] == "TeaCache" and tea["ui"]["magcache"][0]["notices"] == []


# -- input ranges ---------------------------------------------------------------------------------------
def _published():
    mag = [p.params for s in STRATEGIES for p in s.presets.values() if p.params is not None]
    tea = [p.params.rel_l1_thresh for s in STRATEGIES for p in s.tea_presets.values()]
    return max(p.threshold for p in mag), max(p.max_skips for p in mag), max(tea)


def _spec(node, name):
    types = node.INPUT_TYPES()
    return {**types["required"], **types.get("optional", {})}[name][1]


def test_input_maxima_fit_the_published_settings():
    """Each maximum admits every published setting and is at most 2.5 times the largest of them: a typed 99,
    which the front end clamps to the maximum, is not a very aggressive setting (it was 5.0 and 10.0)."""
    threshold, k, rel_l1 = _published()
    for node, name, top in ((MagCacheApply, "threshold", threshold), (MagCacheApply, "max_skip_steps", k),
                            (TeaCacheApply, "rel_l1_thresh", rel_l1), (TeaCacheApply, "max_skip_steps", k)):
        spec = _spec(node, name)
        assert top <= spec["max"] <= 2.5 * top, (node.__name__, name, spec["max"], top)
    for node in (MagCacheApply, TeaCacheApply):
        for name in ("start_percent", "end_percent"):
            assert (_spec(node, name)["min"], _spec(node, name)["max"]) == (0.0, 1.0)
    assert (_spec(MagCacheApply, "retention_ratio")["min"], _spec(MagCacheApply, "retention_ratio")["max"]) == (0.0, 1.0)


@pytest.mark.parametrize("node, name, args", [
    (MagCacheApply, "threshold", lambda v: ("flux", v, 0.2, 4)),
    (MagCacheApply, "max_skip_steps", lambda v: ("flux", 0.2, 0.2, v)),
    (TeaCacheApply, "rel_l1_thresh", lambda v: ("flux", v)),
    (TeaCacheApply, "max_skip_steps", lambda v: ("flux", 0.4, 0.0, 1.0, "main_device", v)),
])
def test_python_callers_get_the_same_range(node, name, args):
    """The node's own check uses the maximum the front end shows; above it, the error names input and range."""
    spec = _spec(node, name)
    step = 1 if isinstance(spec["max"], int) else 0.01
    node().apply(tiny_flux(), *args(spec["max"]))
    with pytest.raises(MagCacheInputError) as e:
        node().apply(tiny_flux(), *args(spec["max"] + step))
    assert str(e.value).startswith(f"{name}: got ") and f"to {spec['max']}" in str(e.value)


# -- the calibration routes -----------------------------------------------------------------------------
STATS = {"cond": {"ratio": [1.0, 0.98, 0.95], "std": [0.0, 0.01, 0.02], "cos": [0, 0, 0], "l1": [0, 0.1, 0.2]}}


@pytest.fixture
def folder(tmp_path):
    """The calibration folder (ComfyUI's user dir, a temp dir in tests) with a saved calibration, a file too big,
    a broken one and a link to a valid calibration outside it; and that outside file ('secret')."""
    store = calibration_store()
    store.save("route ok", "flux", 3, STATS, {"teacache": {"coefficients": [1.0, 0.0]}})
    outside = tmp_path / "secret.json"
    outside.write_text(json.dumps({**json.loads(open(store.path("route ok")).read()), "name": "SECRET-CONTENT"}))
    big = store.path("route big")
    with open(big, "w") as f:
        f.write(" " * (routes.MAX_FILE_BYTES + 1))
    with open(store.path("route broken"), "w") as f:
        f.write("{not json")
    link = store.path("route link")
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(outside, link)
    yield store, outside
    for name in ("route ok", "route big", "route broken", "route link"):
        if os.path.lexists(store.path(name)):
            os.unlink(store.path(name))


def _tree(*folders):
    return {os.path.join(d, f): os.lstat(os.path.join(d, f)).st_mtime_ns for d in folders for f in os.listdir(d)}


async def _requests(calls):
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer
    table = web.RouteTableDef()
    routes.add_routes(table)
    app = web.Application()
    app.add_routes(table)
    async with TestClient(TestServer(app)) as client:
        out = []
        for method, path, body in calls:
            r = await client.request(method, path, data=body, headers={"Content-Type": "application/json"} if body else {})
            out.append((r.status, await r.text()))
        return out


def test_routes_list_and_return_calibrations_and_nothing_else(folder):
    store, outside = folder
    before = _tree(store.folder, str(outside.parent))
    P = routes.PREFIX
    calls = [
        ("GET", P, None),
        ("GET", P + "/route%20ok", None),
        ("GET", P + "/never%20saved", None),               # unknown name
        ("GET", P + "/..%2Fsecret", None),                  # ../ (encoded: one path segment)
        ("GET", P + "/../secret", None),                    # ../ (plain)
        ("GET", P + "/%2E%2E%2F%2E%2E%2Fsecret", None),
        ("GET", P + "/" + str(outside).replace("/", "%2F"), None),   # an absolute path
        ("GET", P + "/route%20link", None),                 # a link out of the folder
        ("GET", P + "/route%20big", None),                  # over the size limit
        ("GET", P + "/route%20broken", None),               # not a calibration
        ("GET", P + "/" + "a" * 65, None),                  # too long a name
        ("GET", P + "/route%20ok", json.dumps({"x": "y" * 100})),   # a body
        ("POST", P + "/route%20ok", json.dumps(STATS)),     # no writes
        ("PUT", P + "/route%20new", json.dumps(STATS)),
        ("DELETE", P + "/route%20ok", None),
    ]
    answers = asyncio.run(_requests(calls))
    status = [s for s, _ in answers]
    assert status[:2] == [200, 200]
    assert status[2] == 404 and status[3] == 400 and status[4] == 404 and status[5] == 400
    assert status[6] == 400 and status[7] == 404 and status[8] == 413 and status[9] == 422 and status[10] == 400
    assert status[11] == 413 and all(s == 405 for s in status[12:]), status
    for (method, path, _), (s, text) in zip(calls, answers):
        assert "SECRET-CONTENT" not in text and "not json" not in text, path
        if s >= 400 and not text.startswith(f"{s}: "):      # ours, not the router's plain "404: Not Found"
            assert "error" in json.loads(text), path
    listing = json.loads(answers[0][1])
    by_name = {c["name"]: c for c in listing["calibrations"]}
    assert by_name["route ok"] == {"name": "route ok", "model": "flux", "steps": 3, "created": by_name["route ok"]["created"],
                                   "conds": ["cond"], "teacache": True}
    assert {"route big", "route broken"} <= {n for n, c in by_name.items() if "error" in c}
    assert "route link" not in by_name                  # a link out of the folder is not listed at all
    assert "calibration: route ok" in listing["presets"]["MagCacheApply"]
    assert "calibration: route ok" in listing["presets"]["TeaCacheApply"]
    doc = json.loads(answers[1][1])
    assert doc["name"] == "route ok" and doc["mag_ratios"]["cond"] == STATS["cond"]["ratio"]
    assert store.folder not in answers[9][1]                # errors name the file, not the server's folders
    assert _tree(store.folder, str(outside.parent)) == before   # nothing written, in the folder or beside it


# -- errors as ComfyUI's error dialog shows them (the node's name, then the message) -------------------
@pytest.mark.parametrize("call", [
    lambda m: MagCacheApply().apply(m, "flux", 0.2, 0.2, 4),                 # another model's preset
    lambda m: MagCacheApply().apply(m, "no such preset", 0.2, 0.2, 4),
    lambda m: TeaCacheApply().apply(m, "flux", 0.2),
    lambda m: TeaCacheApply().apply(m, "no such preset", 0.2),
])
def test_preset_errors_read_as_sentences(call):
    """Names are listed as text, not Python lists, and an unknown preset lists this model's presets only."""
    with pytest.raises(MagCacheInputError) as e:
        call(tiny_wan())
    message = str(e.value)
    assert message.startswith("preset: ") and "['" not in message and "wan2.1_t2v_1.3B, wan2.1_t2v_14B" in message
    assert "hunyuan" not in message and "ltxv" not in message, message
