"""The pack inside a real ComfyUI server (subprocess, CPU) with the demo package: node listing, web
folder, and the demo graphs (demo/comfyui_magcache_demo/example_workflows/) through POST /prompt with a
tiny Wan 2.1 model and the reference model. The pack's own templates: tests/test_templates.py."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from comfy_server import (BYPASSED, DEMO, DEMO_NAME, ROOT, TINY_WAN_FILE, ComfyServer, combo_choices, edited,
                          ensure_tiny_wan, latent_diff, node_id, replaced, template_builder, ui_to_api, workflow_problems)

WORKFLOWS = DEMO / DEMO_NAME / "example_workflows"
TINY_DEMO, REFERENCE = "Tiny Wan test model with MagCache", "Reference model with MagCache"
SEED_B = 7


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("comfy-server")
    tiny = ensure_tiny_wan(work / TINY_WAN_FILE)
    from comfyui_magcache_demo.reference import MODEL_PATH
    # --cache-none: every prompt executes every node, so runs that repeat an earlier graph really run
    # (ComfyUI's default cache would hand back the earlier latent and prove nothing).
    with ComfyServer.start(work, models={"diffusion_models": [tiny, MODEL_PATH]},
                           extra_args=("--disable-api-nodes", "--cache-none")) as srv:
        yield srv


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def load(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def demo():
    return load(TINY_DEMO)


@pytest.fixture(scope="module")
def runs(server, object_info, demo):
    """Runs a named variant of the demo workflow once per module: name -> (result, latent, file)."""
    done = {}

    def run(name: str):
        if name not in done:
            wf = copy.deepcopy(demo)
            if name.startswith("uncached"):
                next(n for n in wf["nodes"] if n["type"] == "MagCacheApply")["mode"] = BYPASSED
            prompt = edited(ui_to_api(wf, object_info), "SaveLatent", filename_prefix=f"test_{name}")
            if name.endswith("_b"):
                prompt = edited(prompt, "KSampler", seed=SEED_B)
            if name == "threshold0":
                prompt = edited(prompt, "MagCacheApply", threshold=0.0)
            if name == "speed2x":
                prompt = edited(prompt, "MagCacheApply", speed="2x")
            save = node_id(prompt, "SaveLatent")
            result = server.run_prompt(prompt)
            assert result.ok, f"{name}: {json.dumps(result.history.get('status'))[:3000]}\n{server.log_tail()}"
            path = server.output_path(result.output(save))
            done[name] = (result, server.load_latent(result.output(save)), path)
        return done[name]
    return run


# -- what the server lists -----------------------------------------------------------------------
def test_object_info_lists_the_nodes(object_info):
    apply = object_info["MagCacheApply"]
    req, opt = apply["input"]["required"], apply["input"].get("optional", {})
    assert apply["input_order"]["required"] == ["model", "preset", "threshold", "retention_ratio", "max_skip_steps",
                                                "start_percent", "end_percent", "cache_device"]
    assert req["model"][0] == "MODEL" and apply["output"] == ["MODEL"]
    presets = req["preset"][0]
    assert {"auto", "wan2.1_t2v_1.3B", "flux"} <= set(presets) and presets[0] == "auto"
    assert req["threshold"][0] == "FLOAT" and req["max_skip_steps"][0] == "INT"
    assert req["cache_device"][0] == ["main_device", "cpu"]
    assert opt["ratios"][0] == "MAGCACHE_RATIOS" and apply["input_order"]["optional"] == [
        "ratios", "speed", "skipped_steps", "first_blocks", "first_blocks_threshold", "min_steps"]
    assert opt["skipped_steps"][0] == ["reuse", "extrapolate"] and opt["skipped_steps"][1]["default"] == "extrapolate"
    assert opt["first_blocks"][1]["default"] == 0 and "one extra residual per cond" in opt["skipped_steps"][1]["tooltip"]
    assert opt["speed"][0] == ["off", "1.5x", "2x", "2.5x", "3x"] and opt["speed"][1]["default"] == "off"
    assert object_info["MagCacheCalibrate"]["input_order"]["required"] == ["model", "calibration_name"]
    assert object_info["MagCacheRatios"]["output"] == ["MAGCACHE_RATIOS"]
    assert object_info["MagCacheDemoConditioning"]["output"] == ["CONDITIONING"]
    assert object_info["MagCacheApply"]["category"] == "MagCache"
    tea = object_info["TeaCacheApply"]
    assert tea["input_order"]["required"] == ["model", "preset", "rel_l1_thresh", "start_percent", "end_percent",
                                              "cache_device"]
    assert tea["input_order"]["optional"] == ["max_skip_steps", "speed", "skipped_steps", "min_steps"]
    assert {"auto", "flux", "wan2.1_t2v_1.3B", "hunyuan_video", "ltxv", "lumina_2"} <= set(tea["input"]["required"]["preset"][0])


def test_web_extension_is_served(server):
    """WEB_DIRECTORY is web/: every .js under it is listed (ComfyUI loads each one), served as it is."""
    web = ROOT / "web"
    scripts = sorted(web.rglob("*.js"))
    assert scripts == [web / "js" / "magcache.js"]
    listed = server.get("/extensions")
    for js in scripts:
        url = f"/extensions/comfyui-magcache/{js.relative_to(web).as_posix()}"
        assert url in listed
        status, body = server.request(url)
        assert status == 200 and body == js.read_bytes()
    assert b'registerExtension' in (ROOT / "web/js/magcache.js").read_bytes()


def test_node_docs_are_served(server, object_info):
    """The info panel asks /extensions/<pack>/docs/<Node>/<locale>.md, then /extensions/<pack>/docs/<Node>.md."""
    ours = [name for name, info in object_info.items() if info["python_module"] == "custom_nodes.comfyui-magcache"]
    assert sorted(ours) == ["MagCacheApply", "MagCacheCalibrate", "MagCacheRatios", "TeaCacheApply"]
    for name in ours:
        for path in (f"docs/{name}/en.md", f"docs/{name}.md"):
            status, body = server.request(f"/extensions/comfyui-magcache/{path}")
            assert status == 200 and body.decode().startswith(f"# {object_info[name]['display_name']}\n"), path
        assert (ROOT / "web/docs" / name / "en.md").read_bytes() == (ROOT / "web/docs" / f"{name}.md").read_bytes()


def test_tiny_wan_loads_as_wan21_t2v(server):
    import comfy.sd
    patcher = comfy.sd.load_diffusion_model(str(server.base / "models/diffusion_models" / TINY_WAN_FILE))
    assert type(patcher.model).__name__ == "WAN21"
    assert type(patcher.model.model_config).__name__ == "WAN21_T2V"
    dm = patcher.model.diffusion_model
    assert (dm.dim, dm.num_heads, dm.num_layers, dm.text_dim) == (256, 2, 2, 4096)


# -- running the demo workflow -------------------------------------------------------------------
def test_demo_workflow_runs_and_skips_steps(runs, server):
    """The committed demo workflow, as the front end would queue it: saved, finite, fewer steps computed."""
    result, lat, path = runs("cached")
    assert path.is_file() and path.parent == server.base / "output"
    assert lat.shape == (1, 16, 1, 8, 8) and lat.dtype == torch.float32
    assert torch.isfinite(lat).all() and lat.abs().max() > 0.1
    assert len(result.runs) == 1, result.log
    run = result.runs[0]
    assert run["method"] == "magcache" and run["total"] == 20
    assert 2 <= run["computed"] < 20 and run["skipped"] == 20 - run["computed"], run
    assert run["steps"][:4] == [0, 1, 2, 3]          # retention 0.2 of 20 steps always compute
    assert [run["steps"]] == thumbnail_spec(TINY_DEMO)["computed"]     # what its thumbnail shows

    ref = runs("uncached")[1]
    max_abs, psnr = latent_diff(ref, lat)
    assert max_abs > 0, "skipping steps changed nothing"
    assert psnr > 30, f"cached latent far from the uncached one: max |d| {max_abs:.4g}, PSNR {psnr:.1f} dB"


def test_threshold_zero_equals_unpatched(runs):
    zero, lat0, _ = runs("threshold0")
    uncached, ref, _ = runs("uncached")
    assert [r["computed"] for r in zero.runs] == [20]
    assert uncached.runs == []                        # bypassed: the pack never ran
    assert torch.equal(lat0, ref)


def test_speed_target_through_the_server(runs):
    result, lat, _ = runs("speed2x")
    assert [r["total"] for r in result.runs] == [20] and result.runs[0]["computed"] * 2 <= 20, result.log
    assert "speed 2x: solved threshold" in result.log and torch.isfinite(lat).all()


def test_two_samplers_share_one_patched_model(server, object_info, demo, runs):
    prompt = ui_to_api(demo, object_info)
    ks, save = node_id(prompt, "KSampler"), node_id(prompt, "SaveLatent")
    prompt["100"] = copy.deepcopy(prompt[ks])
    prompt["100"]["inputs"]["seed"] = SEED_B
    prompt["101"] = {"class_type": "SaveLatent", "inputs": {"samples": ["100", 0], "filename_prefix": "test_two_b"}}
    prompt[save]["inputs"]["filename_prefix"] = "test_two_a"
    with server.listen("magcache.report", "executed") as heard:
        both = server.run_prompt(prompt)
    assert both.ok, server.log_tail()
    assert len(both.runs) == 2, both.log
    # Each sampler's run is reported to the MagCacheApply node, as the log line says it ran.
    apply_id = node_id(prompt, "MagCacheApply")
    reports = [m["data"] for m in heard if m["type"] == "magcache.report"]
    assert [r["node"] for r in reports] == [apply_id] * 2 and {r["prompt_id"] for r in reports} == {both.prompt_id}
    assert sorted(r["run"]["sampler"]["node"] for r in reports) == sorted([ks, "100"])
    for r, line in zip(reports, both.runs):
        run = r["run"]
        assert [i for i, c in enumerate(run["strip"]) if c == "C"] == line["steps"] and run["skipped"] == line["skipped"]
        assert run["title"] == "MagCache" and run["seconds"] > 0 and run["speedup"] == round(20 / line["computed"], 3)
    (ui,) = [m["data"]["output"]["magcache"][0] for m in heard if m["type"] == "executed" and m["data"]["node"] == apply_id]
    assert ui["settings"] == "threshold 0.24, retention 0.2, K 4, skipped steps extrapolated"
    assert ui["label"] == reports[0]["run"]["label"]
    a, b = server.load_latent(both.output(save)), server.load_latent(both.output("101"))
    alone_a, alone_b = runs("cached")[1], runs("cached_b")[1]
    assert not torch.equal(alone_a, alone_b)
    assert torch.equal(a, alone_a) and torch.equal(b, alone_b)


# -- the demo graphs -------------------------------------------------------------------------------
def test_demo_graphs_are_templates_where_the_demo_package_is_installed(server):
    """The demo package's example_workflows/ are listed (with thumbnails) by a server that has it."""
    import urllib.parse
    from comfy_server import PACK_NAME
    listed = server.get("/workflow_templates")
    names = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    assert sorted(listed[DEMO_NAME]) == names == sorted([TINY_DEMO, REFERENCE])
    assert PACK_NAME in listed
    for name in names:
        status, body = server.request(f"/api/workflow_templates/{DEMO_NAME}/{urllib.parse.quote(name)}.jpg")
        assert status == 200 and body == (WORKFLOWS / f"{name}.jpg").read_bytes()


def thumbnail_spec(title: str) -> dict:
    """What a demo graph's thumbnail says a run computes (the pack's rule on the graph's curve)."""
    mod = template_builder()
    import thumbnails
    return thumbnails.spec(next(t for t in mod.templates() if t.title == title))


def test_reference_workflow_runs_on_its_first_run(server):
    """Queued as saved on a server where nothing has been calibrated yet: it runs (its curve is in its
    MagCache Ratios node), computes exactly the steps its thumbnail shows, and saves an image."""
    info = server.get("/object_info")
    presets = combo_choices(info["MagCacheApply"]["input"]["required"]["preset"])
    assert not [p for p in presets if p.startswith("calibration: ")], "run this test before any calibration"
    prompt = ui_to_api(load(REFERENCE), info)
    result = server.run_prompt(edited(prompt, "SaveImage", filename_prefix="test_shapes_first_run"))
    assert result.ok, f"{json.dumps(result.history.get('status'))[:3000]}\n{server.log_tail()}"
    (run,) = result.runs
    assert run["label"].endswith("custom ratios (20 steps)"), run
    assert [run["steps"]] == thumbnail_spec(REFERENCE)["computed"], run
    image = server.output_path(result.output(node_id(prompt, "SaveImage"), "images"))
    assert image.is_file() and image.stat().st_size > 0


@pytest.fixture(scope="module")
def shapes_calibrated(server):
    """The reference model's calibration through the server, as demo/calibrate_reference.py makes the
    shipped one: MagCacheCalibrate in MagCacheApply's place, "a white ring", seed 999, saved as
    'shapes_demo'. Returns (the workflow as an API prompt, fresh object_info, the saved file)."""
    import quality
    info = server.get("/object_info")
    prompt = ui_to_api(load(REFERENCE), info)
    calib = edited(replaced(prompt, "MagCacheApply", "MagCacheCalibrate", calibration_name="shapes_demo"),
                   "KSampler", seed=quality.CALIBRATION_SEED)
    positive = calib[node_id(calib, "KSampler")]["inputs"]["positive"][0]
    calib[positive]["inputs"]["text"] = quality.CALIBRATION_PROMPT
    result = server.run_prompt(edited(calib, "SaveImage", filename_prefix="test_shapes_calibrate"))
    assert result.ok, f"{json.dumps(result.history.get('status'))[:3000]}\n{server.log_tail()}"
    assert "MagCacheCalibrate: saved 'shapes_demo'" in result.log and "TeaCache polynomial fitted" in result.log
    saved = server.base / "user" / "magcache" / "calibrations" / "shapes_demo.json"
    assert str(saved) in result.log
    return prompt, server.get("/object_info"), json.loads(saved.read_text())


def test_reference_workflow_curve_is_the_calibration_of_its_model(shapes_calibrated):
    """The curve in the reference graph's MagCache Ratios node is what calibrating the reference model
    gives on this ComfyUI (to the 4 decimals the widget keeps)."""
    from calibrate_reference import OUT
    saved = shapes_calibrated[2]["mag_ratios"]
    shipped = json.loads(OUT.read_text())["mag_ratios"]
    widget = json.loads(next(n for n in load(REFERENCE)["nodes"] if n["type"] == "MagCacheRatios")["widgets_values"][0])
    assert sorted(saved) == sorted(shipped) == sorted(widget) == ["cond", "uncond"]
    for kind in saved:
        assert len(saved[kind]) == len(widget[kind]) == 20
        assert max(abs(a - b) for a, b in zip(saved[kind], shipped[kind])) < 2e-3, kind
        assert max(abs(round(a, 4) - b) for a, b in zip(shipped[kind], widget[kind])) == 0, kind


def test_reference_workflow_runs_with_magcache_and_teacache(server, shapes_calibrated):
    """The reference workflow on the trained model: MagCache as saved, and TeaCache with the
    polynomial the calibration fitted, each compute fewer of the 20 steps and save an image."""
    prompt, info = shapes_calibrated[:2]
    assert "calibration: shapes_demo" in info["TeaCacheApply"]["input"]["required"]["preset"][0]
    tea = replaced(prompt, "MagCacheApply", "TeaCacheApply", preset="calibration: shapes_demo", rel_l1_thresh=0.1,
                   start_percent=0.0, end_percent=1.0, cache_device="main_device")
    for name, p in (("magcache", prompt), ("teacache", tea)):
        result = server.run_prompt(edited(p, "SaveImage", filename_prefix=f"test_shapes_{name}"))
        assert result.ok, f"{name}: {json.dumps(result.history.get('status'))[:3000]}\n{server.log_tail()}"
        (run,) = result.runs
        assert run["method"] == name and run["total"] == 20 and 2 <= run["computed"] < 20, run
        image = server.output_path(result.output(node_id(p, "SaveImage"), "images"))
        assert image.is_file() and image.stat().st_size > 0


def test_reference_workflow_at_4_steps_computes_every_step_and_tells_the_node(server):
    """A few-step run (4 steps, below MagCacheApply's default min_steps): every step computes, the image is the
    uncached one, and the node is told why when sampling starts; the same graph at 20 steps skips."""
    import numpy as np
    from PIL import Image

    from comfyui_magcache.nodes.schedule import MIN_STEPS
    info = server.get("/object_info")
    wf = load(REFERENCE)
    prompt = edited(ui_to_api(wf, info), "KSampler", steps=4)
    apply_id, save = node_id(prompt, "MagCacheApply"), node_id(prompt, "SaveImage")
    with server.listen("magcache.report") as heard:
        result = server.run_prompt(edited(prompt, "SaveImage", filename_prefix="test_shapes_4_steps"))
    assert result.ok, f"{json.dumps(result.history.get('status'))[:3000]}\n{server.log_tail()}"
    assert not result.runs, result.runs                         # no run line: nothing was cached
    reason = f"a 4-step schedule is below min_steps {MIN_STEPS}"
    assert reason in result.log and "this run computes every step" in result.log
    (sent,) = [m["data"] for m in heard]
    assert sent["node"] == apply_id and sent["run"]["notices"][0].startswith(reason)
    assert sent["run"]["notices"][0].endswith("; every step computed") and sent["run"]["computed"] is None
    bypassed = copy.deepcopy(wf)
    next(n for n in bypassed["nodes"] if n["type"] == "MagCacheApply")["mode"] = BYPASSED
    plain = server.run_prompt(edited(edited(ui_to_api(bypassed, info), "KSampler", steps=4), "SaveImage",
                                     filename_prefix="test_shapes_4_steps_uncached"))
    assert plain.ok, server.log_tail()
    images = [np.asarray(Image.open(server.output_path(r.output(save, "images")))) for r in (result, plain)]
    assert np.array_equal(*images)
    long = server.run_prompt(edited(edited(ui_to_api(wf, info), "KSampler", steps=20), "SaveImage",
                                    filename_prefix="test_shapes_20_steps"))
    (run,) = long.runs
    assert run["total"] == 20 and run["computed"] < 20 and "min_steps" not in long.log, run


@pytest.mark.parametrize("name", [TINY_DEMO, REFERENCE])
def test_demo_graph_matches_object_info(name, object_info):
    """Every node and value of the demo graphs fits this server (which has their model files)."""
    assert workflow_problems(load(name), object_info) == []


def test_calibration_routes_on_the_server(server, shapes_calibrated):
    """The pack's read-only routes are registered in the real server (also under /api)."""
    listing = server.get("/api/magcache/calibrations")
    entry = next(c for c in listing["calibrations"] if c["name"] == "shapes_demo")
    assert entry["model"] == "wan" and entry["steps"] == 20 and entry["teacache"] is True
    assert "calibration: shapes_demo" in listing["presets"]["MagCacheApply"]
    assert listing["presets"] == {t: shapes_calibrated[1][t]["input"]["required"]["preset"][0]
                                  for t in ("MagCacheApply", "TeaCacheApply")}
    doc = server.get("/magcache/calibrations/shapes_demo")
    assert doc["name"] == "shapes_demo" and len(doc["mag_ratios"]["cond"]) == 20
    for bad in ("..%2F..%2Fcomfy.settings", "%2Fetc%2Fpasswd", "never_saved"):
        status, body = server.request(f"/api/magcache/calibrations/{bad}")
        assert status in (400, 404) and b"error" in body, (bad, status, body)
